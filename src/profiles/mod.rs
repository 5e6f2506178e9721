//! Names and avatars. With no user service configured every id gets a placeholder profile and no
//! business has agents; the client of kaha-main-v3 plugs into the same port.

use std::collections::HashMap;

use async_trait::async_trait;
use chat_actors::ids::UserId;
use chat_actors::ports::{Profiles, ProfilesError};
use chat_actors::protocol::Profile;

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
}
