//! Linux artefacts for PV guests: the `vmlinux` ELF inside Debian's bzImage (whose payload is
//! LZ4 today; gzip, xz and zstd are handled the same way), and the gzip decoder the Xen image
//! needs too.
//!
//! A bzImage keeps its compressed kernel at `payload_offset`/`payload_length` in the setup
//! header (boot protocol 2.08+). Every format but gzip is followed by the uncompressed size as
//! 4 little-endian bytes (the kernel's `size_append`); gzip carries its own in its trailer.

use std::io::Read;

/// Decompresses a gzip stream.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| format!("gzip: {e}"))?;
    Ok(out)
}

/// The compression a payload uses, from its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// LZ4's legacy frame (`lz4 -l`), the only LZ4 framing the kernel's decompressor reads.
    Lz4Legacy,
    Xz,
    Zstd,
}

impl Compression {
    /// Recognises a payload by its first bytes.
    pub fn detect(b: &[u8]) -> Option<Compression> {
        if b.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if b.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Some(Compression::Lz4Legacy)
        } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Magic number of an LZ4 legacy frame.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each legacy-frame block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Decompresses a whole LZ4 legacy-frame stream: the magic, then blocks each preceded by its
/// compressed size. A "size" equal to the magic starts a concatenated stream; input too
/// short for the block it announces ends the stream (that is where the kernel's size trailer
/// sits).
pub fn lz4_legacy(b: &[u8]) -> Result<Vec<u8>, String> {
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])));
    if u32_at(0) != Some(LZ4_LEGACY_MAGIC) {
        return Err("lz4: no legacy-frame magic".into());
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut at = 4;
    while let Some(size) = u32_at(at) {
        if size == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let Some(input) = b.get(at + 4..at + 4 + size as usize) else { break };
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|e| format!("lz4: block at offset {at}: {e}"))?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size as usize;
    }
    if out.is_empty() {
        return Err("lz4: no complete block".into());
    }
    Ok(out)
}

/// Decompresses `b` as `c`. For the formats the kernel appends a size to, `b` may carry those 4
/// bytes after the stream; they are not part of it.
pub fn decompress(c: Compression, b: &[u8]) -> Result<Vec<u8>, String> {
    match c {
        Compression::Gzip => gunzip(b),
        Compression::Lz4Legacy => lz4_legacy(b),
        Compression::Xz => {
            let mut out = Vec::new();
            // The size trailer would read as stream padding of the wrong length: leave it out.
            let stream = b.get(..b.len().saturating_sub(4)).unwrap_or(b);
            let mut input = std::io::BufReader::new(stream);
            lzma_rs::xz_decompress(&mut input, &mut out)
                .or_else(|_| {
                    out.clear();
                    lzma_rs::xz_decompress(&mut std::io::BufReader::new(b), &mut out)
                })
                .map_err(|e| format!("xz: {e:?}"))?;
            Ok(out)
        }
        Compression::Zstd => {
            let mut out = Vec::new();
            let mut d = ruzstd::decoding::StreamingDecoder::new(b).map_err(|e| format!("zstd: {e}"))?;
            d.read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
            Ok(out)
        }
    }
}

/// Where a bzImage's compressed kernel is, from its setup header.
pub fn bzimage_payload(b: &[u8]) -> Result<&[u8], String> {
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])));
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS setup header)".into());
    }
    let version = b.get(0x206..0x208).map_or(0, |v| u16::from_le_bytes([v[0], v[1]]));
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields (needs 2.08+)"));
    }
    let setup_sects = match b.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (off, len) = (u32_at(0x248).unwrap_or(0) as usize, u32_at(0x24c).unwrap_or(0) as usize);
    b.get(pm_start + off..pm_start + off + len)
        .ok_or_else(|| format!("payload {off:#x}+{len:#x} lies outside the {} byte image", b.len()))
}

/// The `vmlinux` ELF inside a bzImage, checked against the size the image records.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let payload = bzimage_payload(bzimage)?;
    let c = Compression::detect(payload).ok_or_else(|| {
        format!("unknown payload compression (first bytes {:02x?})", &payload[..payload.len().min(6)])
    })?;
    let elf = decompress(c, payload)?;
    if c != Compression::Gzip {
        let want = payload
            .len()
            .checked_sub(4)
            .map(|t| u32::from_le_bytes(payload[t..].try_into().unwrap_or([0; 4])));
        if want != Some(elf.len() as u32) {
            return Err(format!("{c:?} payload gave {} bytes, the image records {want:?}", elf.len()));
        }
    }
    if !elf.starts_with(b"\x7fELF") {
        return Err(format!("{c:?} payload is not an ELF file"));
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A compressible stand-in for a kernel: an ELF magic and patterned text over several
    /// LZ4 legacy blocks' worth when `big`.
    fn fake_vmlinux(big: bool) -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        let n = if big { LZ4_LEGACY_BLOCK * 2 + 12345 } else { 70_000 };
        v.extend((0..n).map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8));
        v
    }

    fn lz4_legacy_compress(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                return e.finish().unwrap();
            }
            Compression::Lz4Legacy => lz4_legacy_compress(data),
            Compression::Xz => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::BufReader::new(data), &mut out).unwrap();
                out
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
        };
        // The kernel's size_append.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// A minimal bzImage: a setup header with HdrS, protocol 2.15, two setup sectors, and the
    /// payload right after the protected-mode start.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 2u8;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let mut b = vec![0u8; pm_start + 0x40];
        b[0x1f1] = setup_sects;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0xaa; 100]);
        b
    }

    #[test]
    fn extracts_each_compression_format() {
        for c in [Compression::Gzip, Compression::Lz4Legacy, Compression::Xz, Compression::Zstd] {
            let kernel = fake_vmlinux(false);
            let payload = compress(c, &kernel);
            assert_eq!(Compression::detect(&payload), Some(c));
            let image = bzimage(&payload);
            assert_eq!(bzimage_payload(&image).unwrap(), &payload[..], "{c:?}");
            assert_eq!(extract_vmlinux(&image).unwrap(), kernel, "{c:?}");
        }
    }

    #[test]
    fn lz4_legacy_spans_several_blocks() {
        let kernel = fake_vmlinux(true);
        let image = bzimage(&compress(Compression::Lz4Legacy, &kernel));
        assert_eq!(extract_vmlinux(&image).unwrap(), kernel);
    }

    #[test]
    fn rejects_broken_images() {
        assert!(bzimage_payload(&[0u8; 4096]).unwrap_err().contains("HdrS"));
        let kernel = fake_vmlinux(false);
        let mut payload = compress(Compression::Lz4Legacy, &kernel);
        // A wrong size trailer is caught.
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(extract_vmlinux(&bzimage(&payload)).unwrap_err().contains("records"));
        // An unknown format is named.
        assert!(extract_vmlinux(&bzimage(b"BZh91AY&SY")).unwrap_err().contains("unknown payload"));
        // A payload that is not an ELF file is refused.
        let not_elf = compress(Compression::Zstd, b"just text, no kernel");
        assert!(extract_vmlinux(&bzimage(&not_elf)).unwrap_err().contains("not an ELF"));
        // A payload beyond the image is refused.
        let mut b = bzimage(&payload);
        b[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(bzimage_payload(&b).unwrap_err().contains("outside"));
        // A corrupt LZ4 block is an error, not a panic.
        let mut bad = compress(Compression::Lz4Legacy, &kernel);
        for x in &mut bad[8..40] {
            *x = 0xff;
        }
        assert!(extract_vmlinux(&bzimage(&bad)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), c in 0usize..4) {
            let mut p = [LZ4_LEGACY_MAGIC.to_le_bytes().as_slice(), &[0x1f, 0x8b], &[0xfd, b'7', b'z', b'X', b'Z', 0], &[0x28, 0xb5, 0x2f, 0xfd]][c].to_vec();
            p.extend_from_slice(&bytes);
            let _ = extract_vmlinux(&bzimage(&p));
        }
    }
}
