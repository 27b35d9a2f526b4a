//! The execd bundle: `/execd` and `/bootstrap.sh` read from the execd image
//! (as upstream's server does, so any image with those two files works) and
//! repacked as one tar that installs them in `/opt/opensandbox/`.

use std::io::Read;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;

use super::DockerError;

/// Where the bundle installs its files inside a sandbox.
pub const INSTALL_DIR: &str = "opt/opensandbox";

/// Reads the two files from `image` and builds the bundle.
pub async fn from_image(docker: &Docker, image: &str) -> Result<Bytes, DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => {}
        Err(e) => {
            return Err(DockerError::Image {
                image: image.to_string(),
                reason: format!("the execd image must be present locally: {e}"),
            })
        }
    }
    let name = format!("sandbox-execd-{}", uuid::Uuid::new_v4().simple());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["tail".into(), "-f".into(), "/dev/null".into()]),
        ..Default::default()
    };
    super::create_named(docker, &name, body, "execd image container").await?;
    let files = async {
        let execd = read_file(docker, &name, "/execd").await?;
        let boot = read_file(docker, &name, "/bootstrap.sh").await?;
        Ok::<_, DockerError>((execd, boot))
    }
    .await;
    let rm = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(&name, Some(rm)).await;
    let (execd, boot) = files?;
    pack(&[("execd", &execd), ("bootstrap.sh", &boot)])
}

/// One regular file's bytes from a container, through the archive API.
async fn read_file(docker: &Docker, container: &str, path: &str) -> Result<Vec<u8>, DockerError> {
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(opts));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| DockerError::Image {
            image: container.to_string(),
            reason: format!("read {path} from the execd image: {e}"),
        })?;
        tar.extend_from_slice(&chunk);
    }
    let mut archive = tar::Archive::new(&tar[..]);
    let bad = |why: String| DockerError::Image {
        image: container.to_string(),
        reason: format!("{path} in the execd image: {why}"),
    };
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(data);
        }
    }
    Err(bad("not a regular file".into()))
}

/// A tar with the install directory and `files` in it, all mode 0755.
pub fn pack(files: &[(&str, &[u8])]) -> Result<Bytes, DockerError> {
    let mut b = tar::Builder::new(Vec::new());
    let err = |e: std::io::Error| DockerError::Start(format!("pack the execd bundle: {e}"));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    b.append_data(&mut dir, format!("{INSTALL_DIR}/"), std::io::empty())
        .map_err(err)?;
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, format!("{INSTALL_DIR}/{name}"), *data)
            .map_err(err)?;
    }
    Ok(Bytes::from(b.into_inner().map_err(err)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_layout() {
        let t = pack(&[("execd", b"ELF"), ("bootstrap.sh", b"#!/bin/sh\n")]).unwrap();
        let mut a = tar::Archive::new(&t[..]);
        let got: Vec<(String, u32, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                    e.header().size().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("opt/opensandbox/".to_string(), 0o755, 0),
                ("opt/opensandbox/execd".to_string(), 0o755, 3),
                ("opt/opensandbox/bootstrap.sh".to_string(), 0o755, 10),
            ]
        );
    }
}
