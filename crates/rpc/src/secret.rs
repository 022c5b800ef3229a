//! The cluster secret: the bytes every server of a cluster shares and proves it knows.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// The shared cluster secret. Cheap to clone; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

impl ClusterSecret {
    /// Shortest secret accepted.
    pub const MIN_BYTES: usize = 16;
    /// Length of a generated secret.
    pub const GENERATED_BYTES: usize = 32;

    /// A secret from bytes; refused when shorter than [`Self::MIN_BYTES`].
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> io::Result<ClusterSecret> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "cluster secret is {} bytes; at least {} are required",
                    bytes.len(),
                    Self::MIN_BYTES
                ),
            ));
        }
        Ok(ClusterSecret(bytes.into()))
    }

    /// Reads a secret file. A file whose content (surrounding whitespace trimmed) is an even
    /// number of hex digits is hex-decoded; any other file is the secret as raw bytes. Either
    /// way the secret must be at least [`Self::MIN_BYTES`] long.
    pub fn load(path: impl AsRef<Path>) -> io::Result<ClusterSecret> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading cluster secret {}: {e}", path.display()),
            )
        })?;
        let trimmed = raw.trim_ascii();
        let bytes = if !trimmed.is_empty()
            && trimmed.len() % 2 == 0
            && trimmed.iter().all(u8::is_ascii_hexdigit)
        {
            hex::decode(trimmed).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        } else {
            raw
        };
        ClusterSecret::from_bytes(bytes).map_err(|e| {
            io::Error::new(e.kind(), format!("cluster secret {}: {e}", path.display()))
        })
    }

    /// Makes a new random secret of [`Self::GENERATED_BYTES`] and writes it to `path` as hex,
    /// readable by its owner only (mode 0600): written to a temporary file beside it, synced,
    /// renamed into place, and the directory synced. Refuses to replace an existing file.
    pub fn generate(path: impl AsRef<Path>) -> io::Result<ClusterSecret> {
        let path = path.as_ref();
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("cluster secret {} already exists", path.display()),
            ));
        }
        let mut bytes = vec![0u8; Self::GENERATED_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "secret path has no file name")
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);

        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(hex::encode(&bytes).as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("writing cluster secret {}: {e}", path.display()),
            ));
        }
        ClusterSecret::from_bytes(bytes)
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves: generate writes a 0600 hex file that load reads back to the same secret, and
    // refuses to overwrite it.
    #[test]
    fn generate_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let made = ClusterSecret::generate(&path).unwrap();
        assert_eq!(made.as_bytes().len(), ClusterSecret::GENERATED_BYTES);
        assert_eq!(ClusterSecret::load(&path).unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(ClusterSecret::generate(&path).is_err());
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    // Proves: load accepts raw bytes and hex, and refuses secrets shorter than 16 bytes.
    #[test]
    fn load_raw_hex_and_short() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, b"not hex at all, but long enough").unwrap();
        assert_eq!(
            ClusterSecret::load(&raw).unwrap().as_bytes(),
            b"not hex at all, but long enough"
        );
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, "00112233445566778899aabbccddeeff\n").unwrap();
        assert_eq!(ClusterSecret::load(&hexed).unwrap().as_bytes().len(), 16);
        let short = dir.path().join("short");
        std::fs::write(&short, "0011223344556677").unwrap();
        assert!(ClusterSecret::load(&short).is_err());
        std::fs::write(&short, b"tooshort").unwrap();
        assert!(ClusterSecret::load(&short).is_err());
        assert!(ClusterSecret::load(dir.path().join("missing")).is_err());
        assert!(!format!("{:?}", ClusterSecret::load(&hexed).unwrap()).contains("00112233"));
    }
}
