//! chunkd (to be written).
