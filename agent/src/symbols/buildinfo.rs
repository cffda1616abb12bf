//! Go build info: the Go version and main module path the toolchain writes into
//! `.go.buildinfo` (Go 1.18+ layout: 14-byte magic, pointer size, flags, then, with the
//! "inline strings" flag, two varint-length-prefixed strings: version, then module info).

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_INLINE_STRINGS: u8 = 0x2;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. "go1.22.5"
    pub go_version: String,
    /// Main module path, when built in module mode.
    pub main_module: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("no Go build info magic")]
    NoMagic,
    #[error("Go build info uses the pre-1.18 pointer layout (unsupported Go version)")]
    OldLayout,
    #[error("truncated Go build info")]
    Truncated,
}

pub fn parse(section: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    let header = section.get(..HEADER_LEN).ok_or(BuildInfoError::Truncated)?;
    if !header.starts_with(MAGIC) {
        return Err(BuildInfoError::NoMagic);
    }
    let flags = header[15];
    if flags & FLAG_INLINE_STRINGS == 0 {
        return Err(BuildInfoError::OldLayout);
    }
    let mut rest = &section[HEADER_LEN..];
    let version = read_varint_string(&mut rest)?;
    let modinfo = read_varint_string(&mut rest)?;
    Ok(BuildInfo {
        go_version: String::from_utf8_lossy(version).into_owned(),
        main_module: main_module(modinfo),
    })
}

fn read_varint_string<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], BuildInfoError> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let (&b, rest) = data.split_first().ok_or(BuildInfoError::Truncated)?;
        *data = rest;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(BuildInfoError::Truncated);
        }
    }
    let len = usize::try_from(len).map_err(|_| BuildInfoError::Truncated)?;
    if len > data.len() {
        return Err(BuildInfoError::Truncated);
    }
    let (s, rest) = data.split_at(len);
    *data = rest;
    Ok(s)
}

/// The module info is framed by 16 sentinel bytes on each side; its lines are tab-separated
/// (`path\tcommand/path`, `mod\tmodule/path\tversion\t...`).
fn main_module(modinfo: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(modinfo);
    text.lines().find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next()? == "mod").then(|| fields.next().map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(8);
        s.push(FLAG_INLINE_STRINGS);
        s.resize(HEADER_LEN, 0);
        for part in [version, modinfo] {
            s.push(part.len() as u8);
            s.extend_from_slice(part.as_bytes());
        }
        s
    }

    #[test]
    fn parses_version_and_module() {
        let info = parse(&section(
            "go1.22.5",
            "path\texample.com/x\nmod\texample.com/x\t(devel)\t\n",
        ))
        .unwrap();
        assert_eq!(info.go_version, "go1.22.5");
        assert_eq!(info.main_module.as_deref(), Some("example.com/x"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(b"short"), Err(BuildInfoError::Truncated));
        assert_eq!(parse(&[0u8; 64]), Err(BuildInfoError::NoMagic));
        let mut s = section("go1.22.5", "");
        s.truncate(HEADER_LEN + 3);
        assert_eq!(parse(&s), Err(BuildInfoError::Truncated));
        let mut old = section("x", "");
        old[15] = 0;
        assert_eq!(parse(&old), Err(BuildInfoError::OldLayout));
    }
}
