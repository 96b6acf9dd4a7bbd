//! Checksum completion: a frontend with checksum offload (Linux's netfront always, for TCP
//! and UDP over IPv4, and over IPv6 with `feature-ipv6-csum-offload`) sends frames with
//! `NETTXF_csum_blank` whose TCP/UDP checksum is not filled in (Linux leaves the pseudo-header
//! sum there, others zero). Something must finish it before the frame meets a stack that
//! checks: virtio-net's checksum offload is not negotiated and dom0's and the domUs' stacks
//! verify, so netback does it once, at ingress, as Linux's netback does
//! (`skb_checksum_setup` + the NIC's offload).
//!
//! The field is recomputed from scratch (zeroed, pseudo header included), so it does not
//! matter what the frontend left in it. Only what can be checksummed this way is accepted:
//! an IPv4 datagram that is not a fragment, or IPv6 with TCP or UDP as the first next header,
//! each with its lengths inside the frame.

/// Why a frame's checksum could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumError {
    /// Not IPv4 or IPv6 (after an optional VLAN tag).
    NotIp,
    /// A header or length runs past the frame.
    Truncated,
    /// Neither TCP nor UDP, an IPv6 extension header, or an IPv4 fragment.
    Unsupported,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Where the checksum field sits in each header.
const TCP_CSUM_OFFSET: usize = 16;
const UDP_CSUM_OFFSET: usize = 6;
const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
/// IPv4 flags/fragment-offset word: more fragments, and the offset.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

fn be16(b: &[u8], at: usize) -> Result<u16, CsumError> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or(CsumError::Truncated)
}

/// The ones'-complement sum of `data` as big-endian 16-bit words (odd length padded), added
/// to `acc`, not yet folded.
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let mut s = acc;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

/// Folds a sum to 16 bits.
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Fills in the TCP or UDP checksum of `frame` (an Ethernet frame).
pub fn complete(frame: &mut [u8]) -> Result<(), CsumError> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    let (proto, l4, l4_len, pseudo) = match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *frame.get(l3).ok_or(CsumError::Truncated)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HEADER {
                return Err(CsumError::NotIp);
            }
            let total = usize::from(be16(frame, l3 + 2)?);
            let frag = be16(frame, l3 + 6)?;
            if frag & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
                return Err(CsumError::Unsupported);
            }
            if total < ihl || l3 + total > frame.len() {
                return Err(CsumError::Truncated);
            }
            let proto = frame[l3 + 9];
            let l4_len = total - ihl;
            let pseudo = sum(u64::from(proto) + l4_len as u64, &frame[l3 + 12..l3 + 20]);
            (proto, l3 + ihl, l4_len, pseudo)
        }
        ETHERTYPE_IPV6 => {
            if frame.get(l3).ok_or(CsumError::Truncated)? >> 4 != 6 {
                return Err(CsumError::NotIp);
            }
            let l4_len = usize::from(be16(frame, l3 + 4)?);
            if l3 + IPV6_HEADER + l4_len > frame.len() {
                return Err(CsumError::Truncated);
            }
            let proto = frame[l3 + 6];
            let pseudo = sum(u64::from(proto) + l4_len as u64, &frame[l3 + 8..l3 + 40]);
            (proto, l3 + IPV6_HEADER, l4_len, pseudo)
        }
        _ => return Err(CsumError::NotIp),
    };
    let at = match proto {
        PROTO_TCP if l4_len >= TCP_MIN_HEADER => l4 + TCP_CSUM_OFFSET,
        PROTO_UDP if l4_len >= UDP_HEADER => l4 + UDP_CSUM_OFFSET,
        PROTO_TCP | PROTO_UDP => return Err(CsumError::Truncated),
        _ => return Err(CsumError::Unsupported),
    };
    frame[at..at + 2].fill(0);
    let mut c = !fold(sum(pseudo, &frame[l4..l4 + l4_len]));
    // UDP's zero means "no checksum": a computed zero is sent as all ones.
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// An IPv4 TCP or UDP frame with a correct checksum, computed the long way round.
    fn v4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let l4_hdr = if proto == PROTO_TCP { 20 } else { 8 };
        let l4_len = l4_hdr + payload.len();
        let mut f = Vec::new();
        f.extend_from_slice(&[0, 0x16, 0x3e, 0, 1, 0, 0, 0x16, 0x3e, 0, 2, 0, 0x08, 0x00]);
        let total = (20 + l4_len) as u16;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[10, 0, 2, 15, 10, 0, 2, 2]);
        let mut l4 = alloc::vec![0u8; l4_hdr];
        l4[0..4].copy_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        if proto == PROTO_UDP {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            l4[12] = 0x50;
        }
        l4.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&[10, 0, 2, 15, 10, 0, 2, 2, 0, proto]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let mut c = !fold(sum(0, &pseudo));
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }

    #[test]
    fn blank_and_pseudo_header_fields_are_both_completed() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let good = v4(proto, b"hello, world");
            let at = 14 + 20 + if proto == PROTO_TCP { 16 } else { 6 };
            let mut blank = good.clone();
            blank[at..at + 2].fill(0);
            complete(&mut blank).unwrap();
            assert_eq!(blank, good);
            let mut junk = good.clone();
            junk[at..at + 2].copy_from_slice(&[0xde, 0xad]);
            complete(&mut junk).unwrap();
            assert_eq!(junk, good);
        }
    }

    #[test]
    fn what_cannot_be_completed_is_refused() {
        let good = v4(PROTO_TCP, b"x");
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(complete(&mut arp), Err(CsumError::NotIp));
        let mut frag = good.clone();
        frag[14 + 6] = 0x20;
        assert_eq!(complete(&mut frag), Err(CsumError::Unsupported));
        let mut icmp = good.clone();
        icmp[14 + 9] = 1;
        assert_eq!(complete(&mut icmp), Err(CsumError::Unsupported));
        let mut long = good.clone();
        long[14 + 2] = 0xff;
        assert_eq!(complete(&mut long), Err(CsumError::Truncated));
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        assert_eq!(complete(&mut short_ihl), Err(CsumError::NotIp));
        assert_eq!(complete(&mut good[..20].to_vec()), Err(CsumError::Truncated));
        assert_eq!(complete(&mut [0u8; 3]), Err(CsumError::Truncated));
    }

    #[test]
    fn ipv6_and_vlan_tagged_frames() {
        // IPv6 UDP with a zero-sum payload trick is covered by the property test; here a
        // plain one, checked by verifying the sum comes out as all ones.
        let payload = b"abcdefgh";
        let mut f = Vec::new();
        f.extend_from_slice(&[0, 0x16, 0x3e, 0, 1, 0, 0, 0x16, 0x3e, 0, 2, 0, 0x81, 0x00, 0, 5, 0x86, 0xdd]);
        let l4_len = 8 + payload.len();
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, l4_len as u8, PROTO_UDP, 64]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x12, 0x34, 0, 53, 0, l4_len as u8, 0, 0]);
        f.extend_from_slice(payload);
        complete(&mut f).unwrap();
        let l4 = 18 + 40;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[18 + 8..18 + 40]);
        pseudo.extend_from_slice(&[0, 0, 0, l4_len as u8, 0, 0, 0, PROTO_UDP]);
        pseudo.extend_from_slice(&f[l4..]);
        assert_eq!(fold(sum(0, &pseudo)), 0xffff, "a correct checksum sums to all ones");
    }

    proptest! {
        /// Any payload: completing a blanked checksum gives back the correct one.
        #[test]
        fn completion_matches_the_reference(tcp: bool, payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
            let good = v4(proto, &payload);
            let at = 14 + 20 + if tcp { 16 } else { 6 };
            let mut f = good.clone();
            f[at..at + 2].fill(0);
            prop_assert_eq!(complete(&mut f), Ok(()));
            prop_assert_eq!(f, good);
        }

        /// Any bytes at all: never a panic, never a write outside the checksum field.
        #[test]
        fn arbitrary_frames_never_panic(mut f in proptest::collection::vec(any::<u8>(), 0..200)) {
            let before = f.clone();
            if complete(&mut f).is_ok() {
                let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != before[i]).collect();
                prop_assert!(changed.len() <= 2);
                if let (Some(a), Some(b)) = (changed.first(), changed.last()) {
                    prop_assert!(b - a <= 1);
                }
            } else {
                prop_assert_eq!(f, before);
            }
        }
    }
}
