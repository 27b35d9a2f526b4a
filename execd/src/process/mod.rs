//! Processes: spawning with credentials and a subreaper flag, the single
//! owner of `waitpid`, and killing whole process trees.
//!
//! execd is a child subreaper, and so is every command leader it starts: an
//! orphan inside a command stays under the leader while it lives, which is how
//! interrupt and timeout find every process of a command, also those that
//! start their own process group or session.

pub mod creds;
pub mod reaper;
pub mod spawn;
pub mod tree;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// The exit code as upstream reports it: the code, or -1 when signalled.
    pub fn code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(_) => -1,
        }
    }

    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// Go's `ProcessState.String()`: `exit status 3`, `signal: killed`.
    pub fn describe(self) -> String {
        match self {
            Self::Code(c) => format!("exit status {c}"),
            Self::Signal(s) => format!("signal: {}", signal_name(s)),
        }
    }
}

/// Go's names for signals, as in `signal: killed`.
fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_descriptions() {
        assert_eq!(ExitStatus::Code(3).describe(), "exit status 3");
        assert_eq!(ExitStatus::Signal(9).describe(), "signal: killed");
        assert_eq!(ExitStatus::Signal(15).describe(), "signal: terminated");
        assert_eq!(ExitStatus::Signal(9).code(), -1);
        assert_eq!(ExitStatus::Signal(40).describe(), "signal: signal 40");
    }
}
