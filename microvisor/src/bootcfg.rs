//! Boot-domain configuration from a Multiboot module's command line:
//! `<path> [name=<name>] [mem=<size>] [vcpus=<n>] [-- <guest command line>]`, or, for a module
//! that is not a kernel but a domain's Xen ramdisk (`start_info.mod_start`/`mod_len`),
//! `<path> ramdisk=<domain name>`.
//! Sizes take `K`, `M` or `G` suffixes. Unknown options are an error, so typos show up at
//! boot instead of silently changing a domain.

use alloc::string::{String, ToString};

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleConfig {
    pub name: String,
    pub mem_bytes: u64,
    pub vcpus: u32,
    pub guest_cmdline: String,
}

/// Default memory of a boot domain.
pub const DEFAULT_MEM: u64 = 32 << 20;
/// Largest memory a boot domain may ask for.
pub const MAX_MEM: u64 = 64 << 30;

/// Parses a size such as `64M`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// If the module command line marks a ramdisk (`<path> ramdisk=<name>`, nothing else), the
/// name of the domain it belongs to; `None` for a kernel module.
pub fn ramdisk_of(cmdline: &str) -> Option<Result<String, String>> {
    let mut words = cmdline.split_whitespace().skip(1);
    let v = words.clone().find_map(|w| w.strip_prefix("ramdisk="))?;
    if words.nth(1).is_some() || words.any(|w| w == "--") || cmdline.contains(" -- ") {
        return Some(Err(alloc::format!("a ramdisk module takes only `ramdisk=<name>`: `{cmdline}`")));
    }
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some(Err(alloc::format!("bad domain name in `ramdisk={v}`")));
    }
    Some(Ok(v.to_string()))
}

/// Parses a module command line; `default_name` is used without `name=`.
pub fn parse(cmdline: &str, default_name: &str) -> Result<ModuleConfig, String> {
    let (opts, guest) = match cmdline.split_once(" -- ") {
        Some((o, g)) => (o, g.trim()),
        None => (cmdline.strip_suffix(" --").unwrap_or(cmdline), ""),
    };
    let mut cfg = ModuleConfig {
        name: default_name.to_string(),
        mem_bytes: DEFAULT_MEM,
        vcpus: 1,
        guest_cmdline: guest.to_string(),
    };
    // The first word is the module's path.
    for opt in opts.split_whitespace().skip(1) {
        let (k, v) = opt.split_once('=').ok_or_else(|| alloc::format!("option `{opt}` is not key=value"))?;
        match k {
            "name"
                if !v.is_empty()
                    && v.len() <= 32
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                cfg.name = v.to_string()
            }
            "mem" => {
                cfg.mem_bytes = parse_size(v)
                    .filter(|&m| (1 << 20..=MAX_MEM).contains(&m))
                    .ok_or_else(|| alloc::format!("bad memory size `{v}` (1M..64G)"))?
            }
            "vcpus" => cfg.vcpus = v.parse().ok().filter(|&n| n == 1).ok_or("only vcpus=1 is supported")?,
            _ => return Err(alloc::format!("unknown or malformed option `{opt}`")),
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_guest_cmdline() {
        let c = parse("/x/dom0 name=dom0 mem=64M -- console=hvc0 test=x", "d").unwrap();
        assert_eq!(c.name, "dom0");
        assert_eq!(c.mem_bytes, 64 << 20);
        assert_eq!(c.guest_cmdline, "console=hvc0 test=x");
        let c = parse("/x/domu", "domU1").unwrap();
        assert_eq!((c.name.as_str(), c.mem_bytes, c.guest_cmdline.as_str()), ("domU1", DEFAULT_MEM, ""));
    }

    #[test]
    fn ramdisk_modules_name_their_domain() {
        assert_eq!(ramdisk_of("/x/initrd.cpio ramdisk=linux"), Some(Ok("linux".into())));
        assert_eq!(ramdisk_of("/x/domu name=linux mem=64M"), None);
        assert!(ramdisk_of("/x/initrd ramdisk=linux mem=4M").unwrap().is_err());
        assert!(ramdisk_of("/x/initrd ramdisk=linux -- x").unwrap().is_err());
        assert!(ramdisk_of("/x/initrd ramdisk=a/b").unwrap().is_err());
        assert!(ramdisk_of("/x/initrd ramdisk=").unwrap().is_err());
        // A kernel line may not say ramdisk= (it is not one of its options).
        assert!(parse("/x/domu ramdisk=linux name=x", "d").is_err());
    }

    #[test]
    fn rejects_bad_options() {
        assert!(parse("/x/d mem=12Q", "d").is_err());
        assert!(parse("/x/d mem=0", "d").is_err());
        assert!(parse("/x/d bogus=1", "d").is_err());
        assert!(parse("/x/d name=a/b", "d").is_err());
        assert!(parse("/x/d mem=99999999999999999999", "d").is_err());
    }
}
