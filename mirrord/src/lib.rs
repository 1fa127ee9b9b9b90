//! mirrord (to be written).
