//! storyline
