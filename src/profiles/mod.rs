//! Names, avatars and business agents from the user service (kaha-main-v3), cached; with no
//! service configured every id gets a placeholder and no business has agents.

pub mod cache;
pub mod client;
pub mod dev_service;
pub mod shared;

use std::collections::HashMap;

use async_trait::async_trait;
use chat_actors::ids::UserId;
use chat_actors::ports::{Profiles, ProfilesError};
use chat_actors::protocol::Profile;

pub use cache::{CachePolicy, CachedProfiles};
pub use client::UserServiceClient;
pub use shared::SharedProfiles;

/// Profiles when no user service is configured.
#[derive(Debug, Default)]
pub struct PlaceholderProfiles;

#[async_trait]
impl Profiles for PlaceholderProfiles {
    async fn profiles(&self, users: &[UserId], businesses: &[UserId]) -> HashMap<UserId, Profile> {
        users
            .iter()
            .chain(businesses)
            .map(|id| (*id, Profile::placeholder(*id)))
            .collect()
    }

    async fn business_agents(&self, _business: UserId) -> Result<Vec<UserId>, ProfilesError> {
        Err(ProfilesError::UnknownBusiness)
    }

    async fn invalidate(&self, _id: UserId) {}
}
