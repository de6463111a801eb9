//! Reading files an operator points the server at (registry, mapping, sources file, TLS
//! material, App Mesh exports): regular files only, so a FIFO, socket or device put in a file's
//! place cannot block the thread that reads it.
use std::io::Read;
use std::path::Path;

/// Opens `path` for reading if it is a regular file. A FIFO, socket or device in its place is
/// refused (opening a FIFO for reading waits for a writer: the watcher's thread would be stuck
/// there for good): its metadata is checked before it is opened, it is opened non-blocking so a
/// FIFO swapped in between cannot block either, and the opened file is checked again.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    regular(&std::fs::metadata(path)?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    regular(&file.metadata()?)?;
    Ok(file)
}

/// An error naming what the file is unless it is a regular file.
fn regular(m: &std::fs::Metadata) -> std::io::Result<()> {
    if m.is_file() {
        return Ok(());
    }
    let t = m.file_type();
    let what = if t.is_dir() { "a directory" } else { "not a regular file" };
    #[cfg(unix)]
    let what = {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            "a FIFO (named pipe)"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            what
        }
    };
    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("it is {what}; only a regular file is read")))
}

/// Why [`read_capped`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{bytes} bytes; at most {max} are read")]
    TooLarge { bytes: u64, max: u64 },
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => e,
            e @ ReadError::TooLarge { .. } => std::io::Error::new(std::io::ErrorKind::FileTooLarge, e.to_string()),
        }
    }
}

/// Reads a regular file ([`open_regular`]) of at most `max` bytes: a larger one (or one that grows
/// past `max` while it is read) is [`ReadError::TooLarge`], and never more than `max + 1` bytes
/// are held.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(ReadError::TooLarge { bytes: len, max });
    }
    let mut bytes = Vec::with_capacity(len as usize + 1);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { bytes: bytes.len() as u64, max });
    }
    Ok(bytes)
}

/// [`read_capped`] with the size error as an [`std::io::ErrorKind::FileTooLarge`] I/O error.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    Ok(read_capped(path, max)?)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_regular_string(path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read_capped(path, max)?).map_err(|e| {
        ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {}", e.utf8_error())))
    })
}
