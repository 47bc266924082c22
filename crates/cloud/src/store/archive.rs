//! The archive: sealed windows that pass the retention horizon leave the values table for
//! encrypted storage, one file per hour of windows, kept in the cloud's own name at the
//! masters ([`mcloud_store::master::cloud_user`]), which no app can read. A file holds
//! exactly what the values table held (each window's sums of shares, as stored), never
//! anything finer; a range or COMPUTE that reaches back past the horizon reads the hours it
//! needs back.

use super::encoding::decode_window;
use crate::windows::SealedWindow;
use crate::CloudError;
use mcloud_store::client::StoreClient;
use mcloud_store::master::{cloud_user, FileAccess};
use serde::{Deserialize, Serialize};

/// The span of one archive file. The retention horizon moves in whole hours when a cloud
/// archives, so every file is written once, whole.
pub const ARCHIVE_SECS: u64 = 3600;

/// Archive files live as long as the masters allow; a cloud refreshes each one when it is
/// this close to expiring (the masters delete a file whose writer misses its expiry).
const LIFETIME_SECS: u64 = mcloud_store::master::MAX_LIFETIME_SECS;
const REFRESH_AHEAD_SECS: u64 = 30 * 86_400;

/// One hour of sealed windows as the archive keeps it.
#[derive(Serialize, Deserialize)]
struct ArchiveFile {
    party: u16,
    hour: u64,
    /// (window start, its sums encoded as the values table stores them).
    windows: Vec<(u64, Vec<u8>)>,
}

/// A cloud's archive in encrypted storage.
#[derive(Clone)]
pub struct Archive {
    client: StoreClient,
    party: u16,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", cloud_user(self.party))
    }
}

impl Archive {
    /// `client` must reach the masters as this cloud ([`StoreClient::for_cloud`]).
    pub fn new(mut client: StoreClient, party: u16) -> Archive {
        client.options.lifetime_secs = LIFETIME_SECS;
        Archive { client, party }
    }

    fn name(hour: u64) -> String {
        format!("windows/{hour}")
    }

    /// The hour whose file holds the window starting at `start`.
    pub fn hour_of(start: u64) -> u64 {
        start - start % ARCHIVE_SECS
    }

    /// Stores one hour of windows (encoded as the values table stores them); returns once
    /// the masters committed the file.
    pub async fn put(&self, hour: u64, windows: Vec<(u64, Vec<u8>)>) -> Result<(), CloudError> {
        let file = ArchiveFile {
            party: self.party,
            hour,
            windows,
        };
        let bytes = postcard::to_stdvec(&file)
            .map_err(|e| CloudError::Archive(format!("encoding hour {hour}: {e}")))?;
        self.client
            .put(&Archive::name(hour), &bytes, FileAccess::default())
            .await
            .map_err(|e| CloudError::Archive(format!("writing hour {hour}: {e}")))
    }

    /// One hour of windows read back.
    pub async fn get(&self, hour: u64) -> Result<Vec<(u64, SealedWindow)>, CloudError> {
        let bytes = self
            .client
            .get("", &Archive::name(hour), None)
            .await
            .map_err(|e| CloudError::Archive(format!("reading hour {hour}: {e}")))?;
        let file: ArchiveFile = postcard::from_bytes(&bytes)
            .map_err(|e| CloudError::Archive(format!("hour {hour}: {e}")))?;
        if file.party != self.party || file.hour != hour {
            return Err(CloudError::Archive(format!(
                "the file of hour {hour} holds hour {} of cloud {}",
                file.hour, file.party
            )));
        }
        file.windows
            .into_iter()
            .map(|(start, bytes)| {
                if Archive::hour_of(start) != hour {
                    return Err(CloudError::Archive(format!(
                        "the file of hour {hour} holds window {start}"
                    )));
                }
                Ok((start, decode_window(start, &bytes)?))
            })
            .collect()
    }

    /// Refreshes every archive file that expires within [`REFRESH_AHEAD_SECS`] of `now_ms`;
    /// returns how many it refreshed.
    pub async fn refresh_due(&self, now_ms: u64) -> Result<usize, CloudError> {
        let owner = cloud_user(self.party);
        let files = self
            .client
            .list(Some(&owner))
            .await
            .map_err(|e| CloudError::Archive(format!("listing: {e}")))?;
        let due = now_ms.saturating_add(REFRESH_AHEAD_SECS * 1000);
        let mut refreshed = 0;
        for file in files {
            let expires = file.versions.iter().map(|v| v.3).min().unwrap_or(u64::MAX);
            if expires > due {
                continue;
            }
            self.client
                .refresh(&file.key.name)
                .await
                .map_err(|e| CloudError::Archive(format!("refreshing {}: {e}", file.key.name)))?;
            refreshed += 1;
        }
        Ok(refreshed)
    }
}
