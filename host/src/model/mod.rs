//! The vocabulary of the pipeline: identifiers as newtypes, and the event, bucket and story
//! values shared with plugins (defined once, in the SDK, because they mirror the WIT contract).

mod ids;
mod story;

pub use ids::{BucketStart, InvalidId, ShardId, StoryId, TenantId};
pub use story::{Story, latest_revisions};
pub use storyline_sdk::{Bucket, Event, TimestampMs};
