//! RAPI server (in progress).
