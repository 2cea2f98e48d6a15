//! Reading the files a user points the host at (plugins, sidecars, config,
//! state): only regular files. Opening a FIFO for reading blocks until a
//! writer comes, and a device may never end, so both are refused at once.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole of a regular file (a symlink to one is fine).
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    // Non-blocking open, then a check of what was opened: no race with a
    // swap between checking and opening. Reads of a regular file ignore the flag.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file (a {})", kind(&meta.file_type())),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8 text"))
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_and_a_regular_file_is_read() {
        let dir = std::env::temp_dir().join(format!("pgnotifier-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.toml");
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a FIFO)");
        let err = read(&dir).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let file = dir.join("ok.toml");
        std::fs::write(&file, "a = 1").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "a = 1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
