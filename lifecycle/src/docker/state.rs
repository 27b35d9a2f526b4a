//! Docker container state to the Lifecycle API's state, as upstream maps it
//! on every read.

use bollard::models::{ContainerState, ContainerStateStatusEnum};

use crate::model::SandboxStatus;

/// The sandbox status a container state means; `at` is the transition time.
pub fn status_of(s: &ContainerState, at: String) -> SandboxStatus {
    let (state, reason, message) = if s.paused == Some(true) {
        (
            "Paused",
            "CONTAINER_PAUSED",
            "Sandbox container is paused.".to_string(),
        )
    } else if s.running == Some(true) {
        (
            "Running",
            "CONTAINER_RUNNING",
            "Sandbox container is running.".to_string(),
        )
    } else if s.restarting == Some(true) {
        (
            "Running",
            "CONTAINER_RESTARTING",
            "Sandbox container is restarting.".to_string(),
        )
    } else {
        match s.status {
            Some(ContainerStateStatusEnum::CREATED) => (
                "Pending",
                "CONTAINER_STARTING",
                "Sandbox container is starting.".to_string(),
            ),
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                match s.exit_code.unwrap_or(0) {
                    0 => (
                        "Terminated",
                        "CONTAINER_EXITED",
                        "Sandbox container exited successfully.".to_string(),
                    ),
                    n => (
                        "Failed",
                        "CONTAINER_EXITED_ERROR",
                        format!("Sandbox container exited with code {n}."),
                    ),
                }
            }
            other => (
                "Failed",
                "CONTAINER_STATE_UNKNOWN",
                format!(
                    "Sandbox container is in state '{}'.",
                    other.map_or_else(|| "unknown".to_string(), |s| s.to_string())
                ),
            ),
        }
    };
    SandboxStatus {
        state: state.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_at: Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(f: impl FnOnce(&mut ContainerState)) -> String {
        let mut s = ContainerState::default();
        f(&mut s);
        status_of(&s, "t".into()).state
    }

    #[test]
    fn maps_like_upstream() {
        assert_eq!(st(|s| s.running = Some(true)), "Running");
        assert_eq!(
            st(|s| {
                s.running = Some(true);
                s.paused = Some(true);
            }),
            "Paused"
        );
        assert_eq!(
            st(|s| s.status = Some(ContainerStateStatusEnum::CREATED)),
            "Pending"
        );
        assert_eq!(
            st(|s| s.status = Some(ContainerStateStatusEnum::EXITED)),
            "Terminated"
        );
        assert_eq!(
            st(|s| {
                s.status = Some(ContainerStateStatusEnum::EXITED);
                s.exit_code = Some(3);
            }),
            "Failed"
        );
    }
}
