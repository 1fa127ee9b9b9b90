//! blobvirt (to be written).
