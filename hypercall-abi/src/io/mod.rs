//! Shared-memory I/O protocols (`public/io/`): the generic ring and the console, xenstore,
//! block and network protocols built on it.
