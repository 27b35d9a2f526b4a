//! Where log lines go (`OPENSANDBOX_LOG_OUTPUT`, as upstream): stdout,
//! stderr and files, every line to each. A file is rotated at
//! [`ROTATE_BYTES`] keeping [`KEEP`] older files (`<path>.1` newest), the
//! limits upstream gives its lumberjack logger, so logs never fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Size at which a log file is rotated.
pub const ROTATE_BYTES: u64 = 100 * 1024 * 1024;
/// Rotated files kept.
pub const KEEP: usize = 10;

/// One destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to and rotated.
    File(PathBuf),
}

/// Parses upstream's comma list (`stdout`, `stderr` or paths); empty items
/// are skipped, and nothing at all means stdout.
pub fn parse(list: &str) -> Vec<Output> {
    let out: Vec<Output> = list
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.to_ascii_lowercase().as_str() {
            "stdout" => Output::Stdout,
            "stderr" => Output::Stderr,
            _ => Output::File(PathBuf::from(t)),
        })
        .collect();
    if out.is_empty() {
        vec![Output::Stdout]
    } else {
        out
    }
}

/// A log file that rotates itself.
#[derive(Debug)]
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    limit: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl Rotating {
    fn open(path: PathBuf, limit: u64) -> io::Result<Self> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            limit,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let _ = std::fs::remove_file(numbered(&self.path, KEEP));
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.limit {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Stderr,
    File(Rotating),
}

/// Every destination at once: what the subscriber writes to (behind a
/// mutex, so lines never interleave).
#[derive(Debug)]
pub struct Tee {
    sinks: Vec<Sink>,
}

impl Tee {
    /// Opens `outputs` (files are created when missing).
    ///
    /// # Errors
    /// A file that cannot be opened, named in the error.
    pub fn open(outputs: &[Output]) -> io::Result<Self> {
        Self::open_with_limit(outputs, ROTATE_BYTES)
    }

    /// Like [`Tee::open`], rotating files at `limit` bytes.
    ///
    /// # Errors
    /// A file that cannot be opened, named in the error.
    pub fn open_with_limit(outputs: &[Output], limit: u64) -> io::Result<Self> {
        let sinks = outputs
            .iter()
            .map(|o| match o {
                Output::Stdout => Ok(Sink::Stdout),
                Output::Stderr => Ok(Sink::Stderr),
                Output::File(p) => Rotating::open(p.clone(), limit)
                    .map(Sink::File)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { sinks })
    }
}

impl Write for Tee {
    /// Writes to every destination; one that fails (a full disk) does not
    /// keep the line from the others.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut first_error = None;
        for s in &mut self.sinks {
            let r = match s {
                Sink::Stdout => io::stdout().write_all(buf),
                Sink::Stderr => io::stderr().write_all(buf),
                Sink::File(f) => f.write_all(buf),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) if self.sinks.len() == 1 => Err(e),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        for s in &mut self.sinks {
            match s {
                Sink::Stdout => io::stdout().flush()?,
                Sink::Stderr => io::stderr().flush()?,
                Sink::File(f) => f.flush()?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstreams_list() {
        assert_eq!(parse(""), [Output::Stdout]);
        assert_eq!(parse(" , "), [Output::Stdout]);
        assert_eq!(
            parse("stderr, /var/log/egress.log,STDOUT"),
            [
                Output::Stderr,
                Output::File("/var/log/egress.log".into()),
                Output::Stdout
            ]
        );
    }

    #[test]
    fn files_rotate_and_keep_ten() {
        let dir = std::env::temp_dir().join(format!("egress-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.log");
        let mut t = Tee::open_with_limit(&[Output::File(path.clone())], 100).unwrap();
        for i in 0..30 {
            t.write_all(format!("line {i:02} {}\n", "x".repeat(40)).as_bytes())
                .unwrap();
        }
        // 50-byte lines, two per file: 15 files written, the newest 11 kept.
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert!(read(path.clone()).starts_with("line 28 "));
        assert!(read(numbered(&path, 1)).starts_with("line 26 "));
        assert!(read(numbered(&path, KEEP)).starts_with("line 08 "));
        assert!(!numbered(&path, KEEP + 1).exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), KEEP + 1);
        // A file that cannot be opened is an error naming it.
        let bad = dir.join("no/such/dir/e.log");
        let e = Tee::open(&[Output::File(bad.clone())]).unwrap_err();
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
