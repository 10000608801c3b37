//! Decoding requests from untrusted bytes. Every length is checked: a
//! short or malformed request is a [`DecodeError`] (answered EINVAL or
//! dropped), never a panic or an out-of-bounds read.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use zerocopy::FromBytes;

use crate::abi::{self, InHeader, opcode};
use crate::types::{FileHandle, Ino, Unique};

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request shorter than its header")]
    ShortHeader,
    #[error("request length {0} does not match the bytes read")]
    Length(u32),
    #[error("arguments of opcode {0} are truncated")]
    ShortArgs(u32),
    #[error("name in opcode {0} is not NUL-terminated")]
    Name(u32),
}

/// The caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub unique: Unique,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A decoded operation. Names borrow from the request buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation<'a> {
    Init(abi::InitIn),
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        items: Vec<abi::ForgetOne>,
    },
    Getattr {
        fh: Option<FileHandle>,
    },
    Readlink,
    Open {
        flags: u32,
    },
    Read {
        fh: FileHandle,
        offset: u64,
        size: u32,
    },
    Release {
        fh: FileHandle,
    },
    Flush,
    Statfs,
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Access,
    Opendir {
        flags: u32,
    },
    Readdir {
        fh: FileHandle,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: FileHandle,
    },
    /// Open with O_CREAT of a name the lookup did not find.
    Create {
        name: &'a OsStr,
        flags: u32,
        mode: u32,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Interrupt {
        unique: Unique,
    },
    Destroy,
    /// Anything that would modify the filesystem: EROFS.
    Modify,
    /// Anything else: ENOSYS.
    Unsupported,
}

impl Operation<'_> {
    /// The operation's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Init(_) => "INIT",
            Operation::Lookup { .. } => "LOOKUP",
            Operation::Forget { .. } => "FORGET",
            Operation::BatchForget { .. } => "BATCH_FORGET",
            Operation::Getattr { .. } => "GETATTR",
            Operation::Readlink => "READLINK",
            Operation::Open { .. } => "OPEN",
            Operation::Read { .. } => "READ",
            Operation::Release { .. } => "RELEASE",
            Operation::Flush => "FLUSH",
            Operation::Statfs => "STATFS",
            Operation::Getxattr { .. } => "GETXATTR",
            Operation::Listxattr { .. } => "LISTXATTR",
            Operation::Access => "ACCESS",
            Operation::Opendir { .. } => "OPENDIR",
            Operation::Readdir { plus: false, .. } => "READDIR",
            Operation::Readdir { plus: true, .. } => "READDIRPLUS",
            Operation::Releasedir { .. } => "RELEASEDIR",
            Operation::Create { .. } => "CREATE",
            Operation::Rmdir { .. } => "RMDIR",
            Operation::Interrupt { .. } => "INTERRUPT",
            Operation::Destroy => "DESTROY",
            Operation::Modify => "MODIFY",
            Operation::Unsupported => "UNSUPPORTED",
        }
    }
}

/// A decoded request: who, on which inode, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub ctx: Ctx,
    pub opcode: u32,
    pub ino: Ino,
    pub op: Operation<'a>,
}

fn arg<T: FromBytes>(opcode: u32, arg0: &[u8]) -> Result<T, DecodeError> {
    T::read_from_prefix(arg0)
        .map(|(v, _)| v)
        .map_err(|_| DecodeError::ShortArgs(opcode))
}

fn name(opcode: u32, rest: &[u8]) -> Result<&OsStr, DecodeError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Name(opcode))?;
    Ok(OsStr::from_bytes(&rest[..end]))
}

/// The size of an opcode's fixed argument struct (arg0).
fn arg0_size(opcode: u32) -> usize {
    use std::mem::size_of;
    match opcode {
        opcode::INIT => size_of::<abi::InitIn>(),
        opcode::FORGET => size_of::<abi::ForgetIn>(),
        opcode::BATCH_FORGET => size_of::<abi::BatchForgetIn>(),
        opcode::GETATTR => size_of::<abi::GetattrIn>(),
        opcode::OPEN | opcode::OPENDIR => size_of::<abi::OpenIn>(),
        opcode::READ | opcode::READDIR | opcode::READDIRPLUS => size_of::<abi::ReadIn>(),
        opcode::RELEASE | opcode::RELEASEDIR => size_of::<abi::ReleaseIn>(),
        opcode::GETXATTR | opcode::LISTXATTR => size_of::<abi::GetxattrIn>(),
        opcode::INTERRUPT => size_of::<abi::InterruptIn>(),
        opcode::CREATE => size_of::<abi::CreateIn>(),
        _ => 0,
    }
}

/// Decodes a classic `/dev/fuse` request: the whole message as read.
pub fn decode_classic(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let (header, body) = InHeader::read_from_prefix(buf).map_err(|_| DecodeError::ShortHeader)?;
    if header.len as usize != buf.len() {
        return Err(DecodeError::Length(header.len));
    }
    let split = arg0_size(header.opcode).min(body.len());
    decode(&header, body, &body[split..])
}

/// Decodes a request from its parts: `arg0` holds the op's fixed struct
/// (classic: the body; ring: `op_in`), `rest` the variable arguments
/// (classic: what follows arg0; ring: the payload buffer).
pub fn decode<'a>(
    header: &InHeader,
    arg0: &'a [u8],
    rest: &'a [u8],
) -> Result<Request<'a>, DecodeError> {
    let op = header.opcode;
    let operation = operation(op, arg0, rest)?;
    Ok(Request {
        ctx: Ctx {
            unique: Unique(header.unique),
            uid: header.uid,
            gid: header.gid,
            pid: header.pid,
        },
        opcode: op,
        ino: Ino(header.nodeid),
        op: operation,
    })
}

/// The operation `op` with its arguments, as [`decode`] splits them.
// Built in place in the caller's `Request`, as when this was part of
// `decode`: out of line, the large `Result<Operation>` is copied on every
// request (+35 % instructions per GETATTR in the perf gate).
#[inline(always)]
fn operation<'a>(op: u32, arg0: &'a [u8], rest: &'a [u8]) -> Result<Operation<'a>, DecodeError> {
    Ok(match op {
        opcode::INIT => Operation::Init(arg(op, arg0)?),
        opcode::LOOKUP => Operation::Lookup {
            name: name(op, rest)?,
        },
        opcode::FORGET => Operation::Forget {
            nlookup: arg::<abi::ForgetIn>(op, arg0)?.nlookup,
        },
        opcode::BATCH_FORGET => batch_forget(arg0, rest)?,
        opcode::GETATTR => {
            let a: abi::GetattrIn = arg(op, arg0)?;
            Operation::Getattr {
                fh: (a.getattr_flags & 1 != 0).then_some(FileHandle(a.fh)),
            }
        }
        opcode::READLINK => Operation::Readlink,
        opcode::OPEN => Operation::Open {
            flags: arg::<abi::OpenIn>(op, arg0)?.flags,
        },
        opcode::OPENDIR => Operation::Opendir {
            flags: arg::<abi::OpenIn>(op, arg0)?.flags,
        },
        opcode::READ | opcode::READDIR | opcode::READDIRPLUS => read_or_readdir(op, arg0)?,
        opcode::RELEASE => Operation::Release {
            fh: FileHandle(arg::<abi::ReleaseIn>(op, arg0)?.fh),
        },
        opcode::RELEASEDIR => Operation::Releasedir {
            fh: FileHandle(arg::<abi::ReleaseIn>(op, arg0)?.fh),
        },
        opcode::FLUSH => Operation::Flush,
        opcode::STATFS => Operation::Statfs,
        opcode::GETXATTR => Operation::Getxattr {
            size: arg::<abi::GetxattrIn>(op, arg0)?.size,
            name: name(op, rest)?,
        },
        opcode::LISTXATTR => Operation::Listxattr {
            size: arg::<abi::GetxattrIn>(op, arg0)?.size,
        },
        opcode::ACCESS => Operation::Access,
        opcode::INTERRUPT => Operation::Interrupt {
            unique: Unique(arg::<abi::InterruptIn>(op, arg0)?.unique),
        },
        opcode::DESTROY => Operation::Destroy,
        opcode::CREATE => create(arg0, rest)?,
        opcode::RMDIR => Operation::Rmdir {
            name: name(op, rest)?,
        },
        opcode::SETATTR
        | opcode::SYMLINK
        | opcode::MKNOD
        | opcode::MKDIR
        | opcode::UNLINK
        | opcode::RENAME
        | opcode::LINK
        | opcode::WRITE
        | opcode::SETXATTR
        | opcode::REMOVEXATTR
        | opcode::FALLOCATE
        | opcode::RENAME2
        | opcode::TMPFILE => Operation::Modify,
        _ => Operation::Unsupported,
    })
}

/// CREATE: its flags and mode in `arg0`, the name in `rest`. Out of line:
/// rare, and `operation` is a hot path.
#[inline(never)]
fn create<'a>(arg0: &[u8], rest: &'a [u8]) -> Result<Operation<'a>, DecodeError> {
    let op = opcode::CREATE;
    let a: abi::CreateIn = arg(op, arg0)?;
    Ok(Operation::Create {
        name: name(op, rest)?,
        flags: a.flags,
        mode: a.mode,
    })
}

/// BATCH_FORGET: a count in `arg0`, that many items in `rest`.
fn batch_forget<'a>(arg0: &[u8], rest: &[u8]) -> Result<Operation<'a>, DecodeError> {
    let op = opcode::BATCH_FORGET;
    let count = arg::<abi::BatchForgetIn>(op, arg0)?.count as usize;
    let items = <[abi::ForgetOne]>::ref_from_prefix_with_elems(rest, count)
        .map_err(|_| DecodeError::ShortArgs(op))?
        .0;
    Ok(Operation::BatchForget {
        items: items.to_vec(),
    })
}

/// READ, READDIR and READDIRPLUS share their argument struct.
fn read_or_readdir<'a>(op: u32, arg0: &[u8]) -> Result<Operation<'a>, DecodeError> {
    let a: abi::ReadIn = arg(op, arg0)?;
    Ok(if op == opcode::READ {
        Operation::Read {
            fh: FileHandle(a.fh),
            offset: a.offset,
            size: a.size,
        }
    } else {
        Operation::Readdir {
            fh: FileHandle(a.fh),
            offset: a.offset,
            size: a.size,
            plus: op == opcode::READDIRPLUS,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromZeros, IntoBytes};

    fn message(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut h = InHeader::new_zeroed();
        h.len = (40 + body.len()) as u32;
        h.opcode = opcode;
        h.unique = 8;
        h.nodeid = 1;
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decodes_names_and_args() {
        let m = message(opcode::LOOKUP, b"hello\0");
        let r = decode_classic(&m).unwrap();
        assert_eq!(
            r.op,
            Operation::Lookup {
                name: OsStr::new("hello")
            }
        );
        let mut g = abi::GetxattrIn::new_zeroed();
        g.size = 10;
        let mut body = g.as_bytes().to_vec();
        body.extend_from_slice(b"user.x\0");
        let m = message(opcode::GETXATTR, &body);
        assert_eq!(
            decode_classic(&m).unwrap().op,
            Operation::Getxattr {
                name: OsStr::new("user.x"),
                size: 10
            }
        );
        let mut bf = abi::BatchForgetIn::new_zeroed();
        bf.count = 2;
        let mut body = bf.as_bytes().to_vec();
        for i in 0..2u64 {
            body.extend_from_slice(
                abi::ForgetOne {
                    nodeid: i + 2,
                    nlookup: 1,
                }
                .as_bytes(),
            );
        }
        let Operation::BatchForget { items } =
            decode_classic(&message(opcode::BATCH_FORGET, &body))
                .unwrap()
                .op
        else {
            panic!("not a batch forget")
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn refuses_short_and_malformed_requests() {
        assert_eq!(decode_classic(&[0u8; 10]), Err(DecodeError::ShortHeader));
        let mut m = message(opcode::LOOKUP, b"x\0");
        m.push(0);
        assert!(matches!(decode_classic(&m), Err(DecodeError::Length(_))));
        assert_eq!(
            decode_classic(&message(opcode::LOOKUP, b"x")),
            Err(DecodeError::Name(opcode::LOOKUP))
        );
        assert_eq!(
            decode_classic(&message(opcode::READ, &[0; 39])),
            Err(DecodeError::ShortArgs(opcode::READ))
        );
        let mut bf = abi::BatchForgetIn::new_zeroed();
        bf.count = u32::MAX;
        assert!(decode_classic(&message(opcode::BATCH_FORGET, bf.as_bytes())).is_err());
        assert_eq!(
            decode_classic(&message(opcode::MKDIR, b"")).unwrap().op,
            Operation::Modify
        );
        assert!(decode_classic(&message(opcode::CREATE, &[0; 15])).is_err());
        let mut c = abi::CreateIn::new_zeroed();
        c.flags = 0o1101;
        c.mode = 0o100644;
        let mut body = c.as_bytes().to_vec();
        body.extend_from_slice(b"use\0");
        assert_eq!(
            decode_classic(&message(opcode::CREATE, &body)).unwrap().op,
            Operation::Create {
                name: OsStr::new("use"),
                flags: 0o1101,
                mode: 0o100644
            }
        );
        assert_eq!(
            decode_classic(&message(opcode::RMDIR, b"d\0")).unwrap().op,
            Operation::Rmdir {
                name: OsStr::new("d")
            }
        );
        assert_eq!(
            decode_classic(&message(9999, b"")).unwrap().op,
            Operation::Unsupported
        );
    }
}
