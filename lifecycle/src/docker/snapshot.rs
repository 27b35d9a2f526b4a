//! Snapshots on Docker: `docker commit` of a sandbox into the snapshot
//! repository, and inspection and removal of snapshot images.
//!
//! A committed image inherits its container's labels, and Docker can neither
//! drop an inherited label at commit nor at create. So the commit blanks
//! every label under our prefix (value `""`), and [`Driver`]'s views ignore
//! blank labels under the prefix: a sandbox restored from a snapshot carries
//! only the labels it was created with.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::ContainerConfig;
use bollard::query_parameters::{CommitContainerOptionsBuilder, RemoveImageOptionsBuilder};

use super::{engine, DockerError, Driver, View};

/// Upstream's snapshot repository: the one for the default label prefix
/// `opensandbox.io/`.
pub const DEFAULT_REPOSITORY: &str = "opensandbox-snapshots";

/// The repository snapshot images are committed to: the first DNS label of
/// the label prefix plus `-snapshots` (`opensandbox.io/` gives upstream's
/// `opensandbox-snapshots`), so servers with different prefixes keep
/// their snapshots apart. Characters a repository name cannot hold become
/// `-`.
pub fn repository(label_prefix: &str) -> String {
    let first = label_prefix
        .split(['.', '/'])
        .find(|s| !s.is_empty())
        .unwrap_or("opensandbox");
    let mut name: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        name = "opensandbox".into();
    }
    format!("{name}-snapshots")
}

impl Driver {
    /// `docker commit` of the sandbox's container (paused meanwhile) into
    /// `repository:tag`. Returns the image reference.
    pub async fn commit(
        &self,
        v: &View,
        repository: &str,
        tag: &str,
    ) -> Result<String, DockerError> {
        let blank: HashMap<String, String> = v
            .labels
            .keys()
            .filter(|k| k.starts_with(&self.settings.label_prefix))
            .map(|k| (k.clone(), String::new()))
            .collect();
        let opts = CommitContainerOptionsBuilder::new()
            .container(&v.container_id)
            .repo(repository)
            .tag(tag)
            .pause(true)
            .comment("OpenSandbox snapshot")
            .build();
        let config = ContainerConfig {
            labels: Some(blank),
            ..Default::default()
        };
        self.docker()
            .await?
            .commit_container(opts, config)
            .await
            .map_err(engine)?;
        Ok(format!("{repository}:{tag}"))
    }

    /// Whether the image exists locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(engine(e)),
        }
    }

    /// `docker rmi` (not forced). `Ok(false)` when the image was already
    /// gone; [`DockerError::Conflict`] when a container uses it.
    pub async fn remove_image(&self, image: &str) -> Result<bool, DockerError> {
        let opts = RemoveImageOptionsBuilder::new().force(false).build();
        match self
            .docker()
            .await?
            .remove_image(image, Some(opts), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(engine(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_derives_from_the_label_prefix() {
        assert_eq!(repository("opensandbox.io/"), DEFAULT_REPOSITORY);
        assert_eq!(repository("lifecycle.example/"), "lifecycle-snapshots");
        assert_eq!(
            repository("t123-4.test.opensandbox.io/"),
            "t123-4-snapshots"
        );
        assert_eq!(repository("My_Team."), "my-team-snapshots");
        assert_eq!(repository("/"), DEFAULT_REPOSITORY);
    }
}
