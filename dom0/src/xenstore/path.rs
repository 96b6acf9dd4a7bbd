//! Xenstore path rules: allowed characters, relative-path resolution and length limits, and
//! the parent/child relations watches and permission checks use.
//!
//! Paths are ASCII alphanumerics plus `-/_@`; no empty path, no `//`, no trailing `/` except
//! the root itself. `@` starts only the special watch paths (`@introduceDomain`,
//! `@releaseDomain`), accepted where xenstored allows them (watches and permissions). A
//! relative path is resolved under `/local/domain/<domid>/`. Lengths: the whole path at most
//! `XENSTORE_ABS_PATH_MAX`, and the part below any `/local/domain/<id>/` at most
//! `XENSTORE_REL_PATH_MAX` (measured as xenstored's `path-max` quota measures it), so a
//! domain's subtree holds the same paths whether they are written relatively or not.

use alloc::format;
use alloc::string::String;

use hypercall_abi::{DomId, Errno};

use super::wire::{ABS_PATH_MAX, REL_PATH_MAX};

/// The root node.
pub const ROOT: &str = "/";
/// The special nodes fired when a domain is introduced and released (the wire's names).
pub use hypercall_abi::io::xs_wire::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Checks a path as sent by a client (absolute, relative or `@special`) and returns it as a
/// string. Errors are `EINVAL`, as xenstored gives for any malformed path.
pub fn check_syntax(raw: &[u8], allow_special: bool) -> Result<String, Errno> {
    if raw.is_empty() || raw.len() > ABS_PATH_MAX || !raw.iter().all(|&c| valid_char(c)) {
        return Err(Errno::EINVAL);
    }
    if raw[0] == b'@' && !allow_special {
        return Err(Errno::EINVAL);
    }
    if raw[0] != b'/' && raw[0] != b'@' && raw.len() > REL_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    if raw.windows(2).any(|w| w == b"//") || (raw.len() > 1 && raw.ends_with(b"/")) {
        return Err(Errno::EINVAL);
    }
    // All bytes are ASCII, so this cannot fail.
    String::from_utf8(raw.into()).map_err(|_| Errno::EINVAL)
}

/// `/local/domain/<domid>`: the base of a domain's relative paths (GET_DOMAIN_PATH's answer).
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Resolves a syntax-checked path for a connection of `domid`, applying the length limits.
pub fn canonicalize(path: &str, domid: DomId) -> Result<String, Errno> {
    let full = if path.starts_with('/') || path.starts_with('@') {
        String::from(path)
    } else {
        let mut s = domain_path(u32::from(domid.0));
        s.push('/');
        s.push_str(path);
        s
    };
    let local = local_prefix_len(&full);
    if full.len() > ABS_PATH_MAX || (local > 0 && full.len() - local > REL_PATH_MAX) {
        return Err(Errno::EINVAL);
    }
    Ok(full)
}

/// Length of a leading `/local/domain/<digits>/`, or 0 (xenstored skips at most five digits).
fn local_prefix_len(path: &str) -> usize {
    const P: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(P) else { return 0 };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    P.len() + digits + 1
}

/// The domain whose `/local/domain/<id>/` prefix `path` carries, if any (used to turn event
/// paths back into relative ones).
pub fn strip_domain_prefix(path: &str, domid: DomId) -> Option<&str> {
    let base = domain_path(u32::from(domid.0));
    path.strip_prefix(base.as_str())?.strip_prefix('/')
}

/// Parent of a canonical path, as xenstored computes it: everything before the last `/` after
/// the first character, or the root. Special `@name` paths have the root as parent.
pub fn parent(path: &str) -> &str {
    match path[1..].rfind('/') {
        Some(i) => &path[..i + 1],
        None => ROOT,
    }
}

/// Last component of a canonical, non-root path.
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `parent/name`, handling the root.
pub fn child(parent: &str, name: &str) -> String {
    if parent == ROOT {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// True if `child` is `parent` or lies below it (every path lies below the root).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == ROOT {
        return true;
    }
    match child.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// True for `@special` paths (which live outside the `/` tree).
pub fn is_special(path: &str) -> bool {
    path.starts_with('@')
}
