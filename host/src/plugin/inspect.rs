//! Reads what a plugin file claims to be before paying for compilation: a component at all,
//! which version of `storyline:correlator` it exports, what it imports.

use std::path::Path;

use wasmtime::wasmparser::{Encoding, Parser, Payload};

use super::error::LoadError;

/// The interface a plugin exports, without its version.
pub const EXPORT_PREFIX: &str = "storyline:correlator/correlator@";

/// What the top level of a component declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `storyline:correlator` version the component exports.
    pub version: String,
    /// Every top-level export name.
    pub exports: Vec<String>,
    /// Every top-level import name.
    pub imports: Vec<String>,
}

/// Checks the bytes of a plugin file and reads its manifest. Versions it does not support are
/// reported as such, not as a generic mismatch.
pub fn inspect(path: &Path, bytes: &[u8]) -> Result<Manifest, LoadError> {
    let path_buf = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(LoadError::Empty { path: path_buf() });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm { path: path_buf() });
    }
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    // Depth 1 is the outer component; nested modules and components come in between.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload =
            payload.map_err(|e| LoadError::Corrupt { path: path_buf(), reason: e.to_string() })?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(LoadError::CoreModule { path: path_buf() });
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| LoadError::Corrupt {
                        path: path_buf(),
                        reason: e.to_string(),
                    })?;
                    exports.push(export.name.name.to_string());
                }
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| LoadError::Corrupt {
                        path: path_buf(),
                        reason: e.to_string(),
                    })?;
                    imports.push(import.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let version = exports.iter().find_map(|e| e.strip_prefix(EXPORT_PREFIX)).map(str::to_string);
    match version {
        None => Err(LoadError::NotAPlugin { path: path_buf(), exports }),
        Some(v) if !super::SUPPORTED_VERSIONS.contains(&v.as_str()) => {
            Err(LoadError::WrongVersion { path: path_buf(), found: v })
        }
        Some(version) => Ok(Manifest { version, exports, imports }),
    }
}
