//! Generic netlink: resolving a family's id and its multicast groups
//! through the controller (`nlctrl`), with netlink-packet-generic's codec.

use crate::transport::{Conn, Transport};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use std::io;

/// A generic netlink family as the kernel registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The message type for the family's requests.
    pub id: u16,
    /// Multicast groups: (name, id).
    pub groups: Vec<(String, u32)>,
}

impl Family {
    /// The id of the multicast group named `name`.
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }
}

/// Asks the controller for family `name`. A kernel without it answers
/// ENOENT, reported as "not found" with the family's name.
pub fn resolve<T: Transport>(conn: &mut Conn<T>, name: &str) -> io::Result<Family> {
    let req = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    let replies = conn.request(req, 0).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOENT) || e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("this kernel has no generic netlink family {name:?}"),
            )
        } else {
            io::Error::new(
                e.kind(),
                format!("cannot resolve generic netlink family {name:?}: {e}"),
            )
        }
    })?;
    let mut id = None;
    let mut groups = Vec::new();
    for r in replies {
        for nla in r.payload.nlas {
            match nla {
                GenlCtrlAttrs::FamilyId(i) => id = Some(i),
                GenlCtrlAttrs::McastGroups(gs) => {
                    for g in gs {
                        let mut gname = None;
                        let mut gid = None;
                        for a in g {
                            match a {
                                McastGrpAttrs::Name(n) => gname = Some(n),
                                McastGrpAttrs::Id(i) => gid = Some(i),
                            }
                        }
                        if let (Some(n), Some(i)) = (gname, gid) {
                            groups.push((n, i));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let id = id.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the controller's answer for {name:?} has no family id"),
        )
    })?;
    Ok(Family { id, groups })
}
