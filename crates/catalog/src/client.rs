//! The catalog as seen from a sensor or a cloud: a `FlagTable` over HTTPS.

use crate::service::{CREATE_PATH, GET_PATH, SET_PATH};
use crate::{CatalogError, FlagTable};
use mcloud_core::http::post;
use mcloud_core::wire::{
    CreateFlag, CreateFlagsRequest, Flag, FlagIds, FlagsResponse, GetFlagsResponse,
};
use mcloud_core::BatchId;

#[derive(Clone)]
pub struct CatalogClient {
    http: reqwest::Client,
    base: String,
}

impl CatalogClient {
    /// `base` is the catalog's `https://host:port`.
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> CatalogClient {
        CatalogClient {
            http,
            base: base.into().trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

impl FlagTable for CatalogClient {
    async fn create(&self, flags: Vec<CreateFlag>) -> Result<Vec<Flag>, CatalogError> {
        let url = format!("{}{CREATE_PATH}", self.base);
        let r: FlagsResponse = post(&self.http, &url, &CreateFlagsRequest { flags }).await?;
        Ok(r.flags)
    }

    async fn set(&self, ids: Vec<BatchId>) -> Result<Vec<Flag>, CatalogError> {
        let url = format!("{}{SET_PATH}", self.base);
        let r: FlagsResponse = post(&self.http, &url, &FlagIds { ids }).await?;
        Ok(r.flags)
    }

    async fn get(&self, ids: Vec<BatchId>) -> Result<Vec<Option<Flag>>, CatalogError> {
        let url = format!("{}{GET_PATH}", self.base);
        let r: GetFlagsResponse = post(&self.http, &url, &FlagIds { ids }).await?;
        Ok(r.flags)
    }
}
