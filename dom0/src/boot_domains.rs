//! What dom0's toolstack derives about the domains the hypervisor built at boot, from what
//! the hypervisor and dom0's command line say: each domain's name, and the console input an
//! option asks to send.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::DomId;

/// The domain's name from its `xen_domain_handle_t` (microvisor puts the boot module's
/// `name=` there, NUL-padded); a handle that is not such a name (all zero, as Xen's UUIDs
/// are for dom0less domains, or bytes a name cannot hold) gives init-dom0less's
/// `dom0less-<id>`.
pub fn domain_name(handle: &[u8; 16], domid: DomId) -> String {
    let len = handle.iter().position(|&b| b == 0).unwrap_or(handle.len());
    let name = &handle[..len];
    let ok = !name.is_empty()
        && name.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && handle[len..].iter().all(|&b| b == 0);
    match core::str::from_utf8(name) {
        Ok(s) if ok => String::from(s),
        _ => format!("dom0less-{}", domid.0),
    }
}

/// Parses `conin=<domid>:<text>`: the target and the bytes to send (underscores become
/// spaces, as the command line cannot hold them; a newline is added).
pub fn parse_console_input(v: &str) -> Option<(DomId, Vec<u8>)> {
    let (id, text) = v.split_once(':')?;
    let id = id.parse::<u16>().ok().filter(|&d| d != 0)?;
    let mut bytes: Vec<u8> = text.bytes().map(|b| if b == b'_' { b' ' } else { b }).collect();
    bytes.push(b'\n');
    Some((DomId(id), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(s: &[u8]) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..s.len()].copy_from_slice(s);
        h
    }

    #[test]
    fn names_from_handles() {
        assert_eq!(domain_name(&handle(b"domU"), DomId(1)), "domU");
        assert_eq!(domain_name(&handle(b"web-1.test_x"), DomId(1)), "web-1.test_x");
        assert_eq!(domain_name(&[b'a'; 16], DomId(1)), "aaaaaaaaaaaaaaaa");
        assert_eq!(domain_name(&[0; 16], DomId(3)), "dom0less-3");
        // A UUID, or a name with junk after its NUL, or characters a name cannot hold.
        assert_eq!(domain_name(&[0x9f; 16], DomId(2)), "dom0less-2");
        let mut h = handle(b"ab");
        h[5] = 7;
        assert_eq!(domain_name(&h, DomId(2)), "dom0less-2");
        assert_eq!(domain_name(&handle(b"a b"), DomId(2)), "dom0less-2");
        assert_eq!(domain_name(&handle(b"\x1b[2J"), DomId(2)), "dom0less-2");
    }

    #[test]
    fn console_input_option() {
        assert_eq!(parse_console_input("1:hello_there"), Some((DomId(1), b"hello there\n".to_vec())));
        assert_eq!(parse_console_input("7:"), Some((DomId(7), b"\n".to_vec())));
        for bad in ["", "1", "x:hi", "0:hi", "70000:hi", "-1:hi"] {
            assert_eq!(parse_console_input(bad), None, "{bad:?}");
        }
    }
}
