//! What kind of program `dropshim run` is about to start: one that opens
//! its sockets through libc (which `libdropshim.so` reaches with
//! LD_PRELOAD), or one that makes the system calls itself (a statically
//! linked binary, or a Go program, static or not), which no preloaded
//! library sees.
//!
//! Owns: resolving the command through PATH and reading just enough of
//! its ELF headers (by hand, 64- and 32-bit, little- and big-endian) to
//! tell. A script is judged by its `#!` interpreter.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How a program reaches the kernel's socket calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Dynamically linked, through libc: the shim sees its sockets.
    Libc,
    /// Statically linked: no dynamic loader, so no LD_PRELOAD.
    Static,
    /// A Go program: its runtime makes socket system calls directly
    /// (whether or not it is linked dynamically).
    Go,
}

impl Kind {
    pub fn bypasses_libc(self) -> bool {
        self != Kind::Libc
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Libc => "a program linked with libc",
            Kind::Static => "a statically linked program",
            Kind::Go => "a Go program",
        }
    }
}

/// The file `command` names: as given when it holds a `/`, else the first
/// executable of that name on `path` (a PATH value), like execvp.
pub fn resolve(command: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if command.as_os_str().is_empty() {
        return None;
    }
    if command.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(command.to_path_buf());
    }
    let search = path.unwrap_or_else(|| std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(search)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Classifies the program at `file`; `None` when it is neither an ELF
/// file nor a script whose interpreter is one (exec will say why).
pub fn classify(file: &Path) -> Option<Kind> {
    let f = machine_code(file, 0)?;
    Elf::parse(&f)?.kind()
}

/// What the program at `file` (or its script's interpreter) is when its
/// machine code is not this host's 64-bit ABI, which alone the filter
/// and the shim serve: a 32-bit x86 program on x86_64, say. `None` for a
/// host program, or a file that is no ELF program.
pub fn foreign_abi(file: &Path) -> Option<&'static str> {
    let f = machine_code(file, 0)?;
    Elf::parse(&f)?.foreign()
}

/// The ELF file that runs for `file`: itself, or the interpreter its
/// `#!` line names, followed as the kernel does.
fn machine_code(file: &Path, depth: u32) -> Option<File> {
    let f = File::open(file).ok()?;
    let mut head = [0u8; 256];
    let n = read_some(&f, &mut head, 0)?;
    let head = &head[..n];
    if head.starts_with(b"#!") {
        // The kernel allows a few levels of interpreters; so do we.
        if depth >= 4 {
            return None;
        }
        let line = head[2..].split(|&b| b == b'\n').next()?;
        let text = std::str::from_utf8(line).ok()?.trim();
        let interp = text.split_whitespace().next()?;
        return machine_code(Path::new(interp), depth + 1);
    }
    Some(f)
}

/// The host's ELF machine number (`e_machine`).
#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: u16 = 183;

fn read_some(f: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(done)
}

fn read_exact(f: &File, len: usize, offset: u64) -> Option<Vec<u8>> {
    // Headers and name tables only: a bound keeps a corrupt file from
    // asking for gigabytes.
    if len > 16 << 20 {
        return None;
    }
    let mut buf = vec![0u8; len];
    (read_some(f, &mut buf, offset)? == len).then_some(buf)
}

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// The note type Go's linker gives its build ID, under the name "Go".
const NT_GO_BUILDID: u32 = 4;

struct Elf<'f> {
    file: &'f File,
    wide: bool,
    little: bool,
    phoff: u64,
    phentsize: usize,
    phnum: usize,
    shoff: u64,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

impl<'f> Elf<'f> {
    fn parse(file: &'f File) -> Option<Elf<'f>> {
        let id = read_exact(file, 64, 0).or_else(|| read_exact(file, 52, 0))?;
        if &id[..4] != b"\x7fELF" {
            return None;
        }
        let wide = match id[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little = match id[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let mut elf = Elf {
            file,
            wide,
            little,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrndx: 0,
        };
        if wide {
            elf.phoff = elf.u64(&id, 32)?;
            elf.shoff = elf.u64(&id, 40)?;
            elf.phentsize = elf.u16(&id, 54)? as usize;
            elf.phnum = elf.u16(&id, 56)? as usize;
            elf.shentsize = elf.u16(&id, 58)? as usize;
            elf.shnum = elf.u16(&id, 60)? as usize;
            elf.shstrndx = elf.u16(&id, 62)? as usize;
        } else {
            elf.phoff = u64::from(elf.u32(&id, 28)?);
            elf.shoff = u64::from(elf.u32(&id, 32)?);
            elf.phentsize = elf.u16(&id, 42)? as usize;
            elf.phnum = elf.u16(&id, 44)? as usize;
            elf.shentsize = elf.u16(&id, 46)? as usize;
            elf.shnum = elf.u16(&id, 48)? as usize;
            elf.shstrndx = elf.u16(&id, 50)? as usize;
        }
        Some(elf)
    }

    fn u16(&self, b: &[u8], at: usize) -> Option<u16> {
        let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        })
    }

    fn u32(&self, b: &[u8], at: usize) -> Option<u32> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
    }

    fn u64(&self, b: &[u8], at: usize) -> Option<u64> {
        let v: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        })
    }

    /// A word-sized field: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(&self, b: &[u8], at64: usize, at32: usize) -> Option<u64> {
        if self.wide {
            self.u64(b, at64)
        } else {
            self.u32(b, at32).map(u64::from)
        }
    }

    /// How this file's ABI differs from the host's, if it does.
    fn foreign(&self) -> Option<&'static str> {
        let id = read_exact(self.file, 20, 0)?;
        let machine = self.u16(&id, 18)?;
        if self.wide && machine == HOST_MACHINE {
            return None;
        }
        Some(match (self.wide, machine) {
            (false, 3) => "a 32-bit x86 (i386) program",
            (false, 62) => "an x32 program",
            (false, 40) => "a 32-bit Arm program",
            _ => "a program for another architecture",
        })
    }

    fn kind(&self) -> Option<Kind> {
        let (has_interp, go_note) = self.segments()?;
        if go_note || self.has_go_section() {
            return Some(Kind::Go);
        }
        Some(if has_interp { Kind::Libc } else { Kind::Static })
    }

    /// Whether a PT_INTERP segment exists, and whether a note segment
    /// carries Go's build ID.
    fn segments(&self) -> Option<(bool, bool)> {
        let min = if self.wide { 56 } else { 32 };
        if self.phnum == 0 || self.phentsize < min {
            return Some((false, false));
        }
        let table = read_exact(self.file, self.phnum * self.phentsize, self.phoff)?;
        let mut interp = false;
        let mut go = false;
        for i in 0..self.phnum {
            let ph = &table[i * self.phentsize..(i + 1) * self.phentsize];
            match self.u32(ph, 0)? {
                PT_INTERP => interp = true,
                PT_NOTE => {
                    let offset = self.word(ph, 8, 4)?;
                    let size = self.word(ph, 32, 16)? as usize;
                    if let Some(notes) = read_exact(self.file, size.min(4096), offset) {
                        go |= self.notes_have_go_buildid(&notes);
                    }
                }
                _ => {}
            }
        }
        Some((interp, go))
    }

    fn notes_have_go_buildid(&self, notes: &[u8]) -> bool {
        let align = |n: usize| (n + 3) & !3;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (Some(namesz), Some(descsz), Some(kind)) = (
                self.u32(notes, at),
                self.u32(notes, at + 4),
                self.u32(notes, at + 8),
            ) else {
                return false;
            };
            let name_at = at + 12;
            let name = notes.get(name_at..name_at + namesz as usize);
            if kind == NT_GO_BUILDID && name == Some(b"Go\0".as_slice()) {
                return true;
            }
            at = name_at + align(namesz as usize) + align(descsz as usize);
        }
        false
    }

    /// Whether a section is named `.go.buildinfo` (every Go binary since
    /// Go 1.13 has one, stripped or not).
    fn has_go_section(&self) -> bool {
        self.section_names()
            .is_some_and(|names| names.iter().any(|n| n == b".go.buildinfo"))
    }

    fn section_names(&self) -> Option<Vec<Vec<u8>>> {
        let min = if self.wide { 64 } else { 40 };
        if self.shnum == 0 || self.shentsize < min || self.shstrndx >= self.shnum {
            return Some(Vec::new());
        }
        let table = read_exact(self.file, self.shnum * self.shentsize, self.shoff)?;
        let sh = |i: usize| &table[i * self.shentsize..(i + 1) * self.shentsize];
        let strtab = sh(self.shstrndx);
        let str_off = self.word(strtab, 24, 16)?;
        let str_size = self.word(strtab, 32, 20)? as usize;
        let strings = read_exact(self.file, str_size, str_off)?;
        let mut names = Vec::with_capacity(self.shnum);
        for i in 0..self.shnum {
            let at = self.u32(sh(i), 0)? as usize;
            let rest = strings.get(at..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            names.push(rest[..end].to_vec());
        }
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libc_program_is_told_apart() {
        let sh = resolve(Path::new("sh"), None).expect("sh on the default PATH");
        assert_eq!(classify(&sh), Some(Kind::Libc));
        assert!(!Kind::Libc.bypasses_libc());
        assert!(Kind::Static.bypasses_libc() && Kind::Go.bypasses_libc());
    }

    #[test]
    fn scripts_are_judged_by_their_interpreter_and_junk_is_not_elf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").expect("write");
        assert_eq!(classify(&script), Some(Kind::Libc));
        let junk = dir.path().join("j");
        std::fs::write(&junk, b"\x7fELF\x02").expect("write");
        assert_eq!(classify(&junk), None);
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(classify(&empty), None);
    }

    /// The smallest i386 program: exit(0) through `int 0x80`.
    fn i386_exit_program() -> Vec<u8> {
        let base: u32 = 0x0804_8000;
        let code = [0x31, 0xdb, 0xb8, 1, 0, 0, 0, 0xcd, 0x80];
        let total = 52 + 32 + code.len() as u32;
        let mut elf = b"\x7fELF\x01\x01\x01".to_vec();
        elf.resize(16, 0);
        for half in [2u16, 3] {
            elf.extend_from_slice(&half.to_le_bytes()); // ET_EXEC, EM_386
        }
        for word in [1u32, base + 52 + 32, 52, 0, 0] {
            elf.extend_from_slice(&word.to_le_bytes()); // version, entry, phoff, shoff, flags
        }
        for half in [52u16, 32, 1, 0, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, sh*
        }
        for word in [1u32, 0, base, base, total, total, 5, 0x1000] {
            elf.extend_from_slice(&word.to_le_bytes()); // PT_LOAD, R+X
        }
        elf.extend_from_slice(&code);
        elf
    }

    #[test]
    fn a_program_of_another_abi_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let prog = dir.path().join("p32");
        std::fs::write(&prog, i386_exit_program()).expect("write");
        assert_eq!(foreign_abi(&prog), Some("a 32-bit x86 (i386) program"));
        assert_eq!(classify(&prog), Some(Kind::Static));
        let script = dir.path().join("s");
        std::fs::write(&script, format!("#!{}\n", prog.display())).expect("write");
        assert_eq!(foreign_abi(&script), Some("a 32-bit x86 (i386) program"));
        let sh = resolve(Path::new("sh"), None).expect("sh on the default PATH");
        assert_eq!(foreign_abi(&sh), None);
    }

    #[test]
    fn resolve_searches_path_like_execvp() {
        assert_eq!(
            resolve(Path::new("./x"), None),
            Some(PathBuf::from("./x")),
            "a name with a slash is taken as it is"
        );
        assert_eq!(resolve(Path::new("no-such-program-dropshim"), None), None);
        let found = resolve(
            Path::new("sh"),
            Some(std::ffi::OsStr::new("/nonexistent:/bin")),
        );
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
    }
}
