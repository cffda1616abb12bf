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
    /// Main module version (`(devel)` for a local build), when built in module mode.
    pub main_version: Option<String>,
    /// The main package's import path (`path` line), e.g. `example.com/x/cmd/server`.
    pub main_package: Option<String>,
    /// Module dependencies as linked (after `replace` directives), in the binary's order.
    pub deps: Vec<Module>,
    /// Build settings (`-buildmode`, `CGO_ENABLED`, `vcs.revision`, ...), in order.
    pub settings: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// The module path as required (`go.mod`'s require line).
    pub path: String,
    /// The version linked: the replacement's when a `replace` directive applies.
    pub version: String,
    /// The replacement's path, when a `replace` directive applies (a module or a directory).
    pub replaced_by: Option<String>,
}

impl BuildInfo {
    /// A build setting's value (`CGO_ENABLED`, `-buildmode`, ...).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
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
    let mut info = BuildInfo {
        go_version: String::from_utf8_lossy(version).into_owned(),
        ..BuildInfo::default()
    };
    parse_modinfo(modinfo, &mut info);
    Ok(info)
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

/// The module info (framed by 16 sentinel bytes on each side when present) is lines of
/// tab-separated fields: `path\tPKG`, `mod\tPATH\tVERSION\tSUM`, `dep\tPATH\tVERSION\tSUM`,
/// `=>\tPATH\tVERSION\tSUM` (replaces the dep before it), `build\tKEY=VALUE`.
fn parse_modinfo(modinfo: &[u8], info: &mut BuildInfo) {
    let framed = modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n';
    let modinfo = if framed {
        &modinfo[16..modinfo.len() - 16]
    } else {
        modinfo
    };
    let text = String::from_utf8_lossy(modinfo);
    for line in text.lines() {
        let mut fields = line.split('\t');
        let kind = fields.next().unwrap_or_default();
        let path = fields.next().unwrap_or_default().to_owned();
        let version = fields.next().unwrap_or_default().to_owned();
        match kind {
            "path" => info.main_package = Some(path),
            "mod" => {
                info.main_module = Some(path);
                info.main_version = Some(version);
            }
            "dep" => info.deps.push(Module {
                path,
                version,
                replaced_by: None,
            }),
            "=>" => {
                if let Some(last) = info.deps.last_mut() {
                    last.version = version;
                    last.replaced_by = Some(path);
                }
            }
            "build" => {
                if let Some((k, v)) = path.split_once('=') {
                    info.settings.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => {}
        }
    }
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
            let mut len = part.len();
            while len >= 0x80 {
                s.push((len as u8) | 0x80);
                len >>= 7;
            }
            s.push(len as u8);
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
        assert_eq!(info.main_version.as_deref(), Some("(devel)"));
        assert_eq!(info.main_package.as_deref(), Some("example.com/x"));
    }

    #[test]
    fn parses_deps_replacements_and_settings() {
        // Framed by 16 sentinel bytes on each side, as the linker writes it.
        let modinfo = "0123456789abcdefpath\tex.com/x/cmd/s\n\
                       mod\tex.com/x\tv1.2.3\th1:abc=\n\
                       dep\tgithub.com/a/b\tv0.1.0\th1:x=\n\
                       dep\tgithub.com/c/d\tv1.0.0\n\
                       =>\t../d\t(devel)\t\n\
                       build\t-buildmode=pie\n\
                       build\tCGO_ENABLED=1\n\
                       0123456789abcdef";
        let info = parse(&section("go1.25.5", modinfo)).unwrap();
        assert_eq!(info.main_package.as_deref(), Some("ex.com/x/cmd/s"));
        assert_eq!(info.main_version.as_deref(), Some("v1.2.3"));
        assert_eq!(
            info.deps,
            vec![
                Module {
                    path: "github.com/a/b".into(),
                    version: "v0.1.0".into(),
                    replaced_by: None,
                },
                Module {
                    path: "github.com/c/d".into(),
                    version: "(devel)".into(),
                    replaced_by: Some("../d".into()),
                },
            ]
        );
        assert_eq!(info.setting("-buildmode"), Some("pie"));
        assert_eq!(info.setting("CGO_ENABLED"), Some("1"));
        assert_eq!(info.setting("GOOS"), None);
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
