//! Architecture layer: the only place with assembly and hardware `unsafe`.
pub mod x86_64;
