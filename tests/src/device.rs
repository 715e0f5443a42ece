//! Any node of a testbed on any stack, over any of its links or segments
//! (the drop-home and drop-mesh tests, where every end device picks its
//! own stack): the stacks crate's [`NodeStack`] with this run's artifacts.

use crate::stack::tools;
use anyhow::Result;
use dropshim_stacks::DeviceFile;
pub use dropshim_stacks::{Iface, NodeStack, STACKS};
use dropshim_testbed::Testbed;

/// `node` on `kind` over `ifaces`. native uses the namespace's own
/// addresses, endpoints and routes (from the spec); uml and lkl take the
/// interfaces over with a device file written from the testbed's
/// addresses, up to four subflows.
pub fn node_stack(tb: &Testbed, node: &str, kind: &str, ifaces: &[Iface]) -> Result<NodeStack> {
    let mut file = DeviceFile::new(ifaces.to_vec());
    file.subflows = Some(4);
    NodeStack::up(kind, tb, node, &file, kind, &tools(kind)?)
}
