//! network-session (written when the plugin lands)
