//! poold (to be written).
