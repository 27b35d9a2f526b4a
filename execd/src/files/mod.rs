//! Files and directories: metadata, listing and search, batch operations,
//! streaming uploads and downloads.
//!
//! Every function takes already-parsed arguments and returns a typed
//! [`FileError`]; the HTTP layer (`api::files`) maps them to responses.

pub mod download;
pub mod info;
pub mod ops;
pub mod path;
pub mod perms;
pub mod tree;
pub mod upload;

use std::io;

/// Why a file operation failed. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The request's path could not be expanded (undefined `$VAR`, NUL byte, empty).
    #[error("{0}")]
    BadPath(String),
    /// The request itself is wrong (bad parameter, wrong kind of file, …).
    #[error("{0}")]
    Invalid(String),
    /// A path that must exist does not.
    #[error("{0}")]
    NotFound(String),
    /// A filesystem call failed; `context` says which and on what.
    #[error("{context}. {source}")]
    Io {
        /// What was being done, e.g. `error removing file /a`.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A malformed upload, with upstream's code (`INVALID_FILE`, `INVALID_FILE_METADATA`, …).
    #[error("{message}")]
    Upload {
        /// The error code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The target is in the way (exists, or is the wrong kind of file).
    #[error("{0}")]
    Conflict(String),
    /// The file is larger than the operation accepts.
    #[error("{0}")]
    TooLarge(String),
    /// Some items of a batch failed; the others were applied.
    #[error("{}", FileError::batch_message(*total, failures))]
    Batch {
        /// Items in the batch.
        total: usize,
        /// Each failed item (its path as given) and why, in batch order.
        failures: Vec<(String, FileError)>,
    },
    /// Anything else that is execd's fault.
    #[error("{0}")]
    Runtime(String),
}

impl FileError {
    /// The message of a [`FileError::Batch`]: how many failed, and each failure.
    pub fn batch_message(total: usize, failures: &[(String, FileError)]) -> String {
        let each: Vec<String> = failures.iter().map(|(p, e)| format!("{p}: {e}")).collect();
        format!(
            "{} of {total} items failed: {}",
            failures.len(),
            each.join("; ")
        )
    }

    /// An I/O failure while doing `context`; a missing file becomes [`FileError::NotFound`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.kind() == io::ErrorKind::NotFound {
            Self::NotFound(format!("{context}. {source}"))
        } else {
            Self::Io { context, source }
        }
    }
}
