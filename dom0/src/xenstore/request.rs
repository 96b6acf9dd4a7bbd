//! Typed requests: the payload of each message type parsed and validated the way xenstored
//! does (NUL terminators, string counts, path syntax, numbers), so the store code only ever
//! sees well-formed input. Every rejection is `EINVAL`, xenstored's answer to a malformed
//! payload.

use alloc::string::String;
use alloc::vec::Vec;

use hypercall_abi::{DomId, Errno, Port};

use super::path::check_syntax;
use super::perms::{parse_decimal, PermEntry, Perms};
use super::wire::{nul_strings, one_arg};
use super::XsdSockmsgType as MsgType;

/// A parsed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// CONTROL `<command>|[<parameters>|]*`.
    Control { args: Vec<Vec<u8>> },
    /// DIRECTORY `<path>|`.
    Directory { path: String },
    /// DIRECTORY_PART `<path>|<offset>|`.
    DirectoryPart { path: String, offset: u32 },
    /// READ `<path>|`.
    Read { path: String },
    /// GET_PERMS `<path>|` (special paths allowed).
    GetPerms { path: String },
    /// WATCH `<path>|<token>|` (special paths allowed).
    Watch { path: String, token: Vec<u8> },
    /// UNWATCH `<path>|<token>|`.
    Unwatch { path: String, token: Vec<u8> },
    /// TRANSACTION_START (payload ignored, as xenstored ignores it).
    TransactionStart,
    /// TRANSACTION_END `T|` (commit) or `F|` (abort).
    TransactionEnd { commit: bool },
    /// INTRODUCE `<domid>|<gfn>|<evtchn>|`.
    Introduce { domid: DomId, gfn: u64, port: Port },
    /// RELEASE `<domid>|`.
    Release { domid: DomId },
    /// GET_DOMAIN_PATH `<domid>|`.
    GetDomainPath { domid: u32 },
    /// WRITE `<path>|<value>` (the value may hold NULs and has no terminator).
    Write { path: String, value: Vec<u8> },
    /// MKDIR `<path>|`.
    Mkdir { path: String },
    /// RM `<path>|`.
    Rm { path: String },
    /// SET_PERMS `<path>|<perm>|+` (special paths allowed).
    SetPerms { path: String, perms: Perms },
    /// IS_DOMAIN_INTRODUCED `<domid>|`.
    IsDomainIntroduced { domid: DomId },
    /// RESUME `<domid>|`.
    Resume { domid: DomId },
    /// SET_TARGET `<domid>|<tdomid>|`.
    SetTarget { domid: DomId, target: DomId },
    /// RESET_WATCHES.
    ResetWatches,
}

fn domid_arg(s: &[u8]) -> Result<DomId, Errno> {
    let v = parse_decimal(s).ok_or(Errno::EINVAL)?;
    u16::try_from(v).map(DomId).map_err(|_| Errno::EINVAL)
}

/// Exactly `N` NUL-terminated strings (trailing bytes after the last NUL are ignored).
fn strings<const N: usize>(payload: &[u8]) -> Result<[&[u8]; N], Errno> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    for s in nul_strings(payload) {
        if n == N {
            return Err(Errno::EINVAL);
        }
        out[n] = s;
        n += 1;
    }
    if n == N {
        Ok(out)
    } else {
        Err(Errno::EINVAL)
    }
}

/// At least `N` strings; returns the first `N`.
fn first_strings<const N: usize>(payload: &[u8]) -> Result<[&[u8]; N], Errno> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut it = nul_strings(payload);
    for slot in out.iter_mut() {
        *slot = it.next().ok_or(Errno::EINVAL)?;
    }
    Ok(out)
}

fn one(payload: &[u8]) -> Result<&[u8], Errno> {
    one_arg(payload).ok_or(Errno::EINVAL)
}

impl Request {
    /// Parses the payload of a request of type `ty`. Types we do not handle (WATCH_EVENT,
    /// ERROR, the feature and quota calls) give `ENOSYS`, like unknown numbers.
    pub fn parse(ty: MsgType, payload: &[u8]) -> Result<Request, Errno> {
        Ok(match ty {
            MsgType::WatchEvent
            | MsgType::Error
            | MsgType::GetFeature
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota => return Err(Errno::ENOSYS),
            MsgType::Control => {
                let args: Vec<Vec<u8>> = nul_strings(payload).map(Vec::from).collect();
                if args.is_empty() {
                    return Err(Errno::EINVAL);
                }
                Request::Control { args }
            }
            MsgType::Directory => Request::Directory { path: check_syntax(one(payload)?, false)? },
            MsgType::DirectoryPart => {
                let [path, offset] = strings::<2>(payload)?;
                let offset = parse_decimal(offset).ok_or(Errno::EINVAL)?;
                Request::DirectoryPart { path: check_syntax(path, false)?, offset }
            }
            MsgType::Read => Request::Read { path: check_syntax(one(payload)?, false)? },
            MsgType::GetPerms => Request::GetPerms { path: check_syntax(one(payload)?, true)? },
            MsgType::Watch | MsgType::Unwatch => {
                let [path, token] = strings::<2>(payload)?;
                let path = check_syntax(path, true)?;
                let token = Vec::from(token);
                if ty == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            MsgType::TransactionStart => Request::TransactionStart,
            MsgType::TransactionEnd => match one(payload)? {
                b"T" => Request::TransactionEnd { commit: true },
                b"F" => Request::TransactionEnd { commit: false },
                _ => return Err(Errno::EINVAL),
            },
            MsgType::Introduce => {
                let [domid, gfn, port] = first_strings::<3>(payload)?;
                let domid = domid_arg(domid)?;
                let gfn = parse_gfn(gfn)?;
                let port = parse_decimal(port).ok_or(Errno::EINVAL)?;
                if port == 0 {
                    return Err(Errno::EINVAL);
                }
                Request::Introduce { domid, gfn, port: Port(port) }
            }
            MsgType::Release => Request::Release { domid: domid_arg(one(payload)?)? },
            MsgType::GetDomainPath => {
                Request::GetDomainPath { domid: parse_decimal(one(payload)?).ok_or(Errno::EINVAL)? }
            }
            MsgType::Write => {
                let nul = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
                let path = check_syntax(&payload[..nul], false)?;
                Request::Write { path, value: Vec::from(&payload[nul + 1..]) }
            }
            MsgType::Mkdir => Request::Mkdir { path: check_syntax(one(payload)?, false)? },
            MsgType::Rm => Request::Rm { path: check_syntax(one(payload)?, false)? },
            MsgType::SetPerms => {
                let mut it = nul_strings(payload);
                let path = check_syntax(it.next().ok_or(Errno::EINVAL)?, true)?;
                let entries: Vec<PermEntry> = it.map(Perms::parse_entry).collect::<Result<_, _>>()?;
                let perms = Perms::from_entries(entries).ok_or(Errno::EINVAL)?;
                Request::SetPerms { path, perms }
            }
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced { domid: domid_arg(one(payload)?)? },
            MsgType::Resume => Request::Resume { domid: domid_arg(one(payload)?)? },
            MsgType::SetTarget => {
                let [domid, target] = first_strings::<2>(payload)?;
                Request::SetTarget { domid: domid_arg(domid)?, target: domid_arg(target)? }
            }
            MsgType::ResetWatches => Request::ResetWatches,
        })
    }

    /// The message type this request travels as.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control { .. } => MsgType::Control,
            Request::Directory { .. } => MsgType::Directory,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
            Request::Read { .. } => MsgType::Read,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release { .. } => MsgType::Release,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced { .. } => MsgType::IsDomainIntroduced,
            Request::Resume { .. } => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// The payload a client sends for this request (the inverse of [`Request::parse`]).
    pub fn to_payload(&self) -> Vec<u8> {
        fn z(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(s);
            out.push(0);
        }
        let mut out = Vec::new();
        match self {
            Request::Control { args } => args.iter().for_each(|a| z(&mut out, a)),
            Request::Directory { path }
            | Request::Read { path }
            | Request::GetPerms { path }
            | Request::Mkdir { path }
            | Request::Rm { path } => z(&mut out, path.as_bytes()),
            Request::DirectoryPart { path, offset } => {
                z(&mut out, path.as_bytes());
                z(&mut out, alloc::format!("{offset}").as_bytes());
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                z(&mut out, path.as_bytes());
                z(&mut out, token);
            }
            Request::TransactionStart | Request::ResetWatches => out.push(0),
            Request::TransactionEnd { commit } => z(&mut out, if *commit { b"T" } else { b"F" }),
            Request::Introduce { domid, gfn, port } => {
                z(&mut out, alloc::format!("{}", domid.0).as_bytes());
                z(&mut out, alloc::format!("{gfn}").as_bytes());
                z(&mut out, alloc::format!("{}", port.0).as_bytes());
            }
            Request::Release { domid }
            | Request::IsDomainIntroduced { domid }
            | Request::Resume { domid } => z(&mut out, alloc::format!("{}", domid.0).as_bytes()),
            Request::GetDomainPath { domid } => z(&mut out, alloc::format!("{domid}").as_bytes()),
            Request::Write { path, value } => {
                z(&mut out, path.as_bytes());
                out.extend_from_slice(value);
            }
            Request::SetPerms { path, perms } => {
                z(&mut out, path.as_bytes());
                out.extend_from_slice(&perms.to_wire());
            }
            Request::SetTarget { domid, target } => {
                z(&mut out, alloc::format!("{}", domid.0).as_bytes());
                z(&mut out, alloc::format!("{}", target.0).as_bytes());
            }
        }
        out
    }
}

/// The frame number in INTRODUCE: signed decimal on the wire (the toolstack prints it with
/// `%ld`), which xenstored does not use since it maps the reserved grant instead. We accept an
/// optional minus sign and keep the two's-complement value.
fn parse_gfn(s: &[u8]) -> Result<u64, Errno> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Errno::EINVAL);
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))).ok_or(Errno::EINVAL)?;
    }
    Ok(if neg { v.wrapping_neg() } else { v })
}
