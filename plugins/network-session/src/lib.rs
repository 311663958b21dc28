//! network-session
