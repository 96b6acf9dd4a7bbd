//! Compile-time layout assertions, so a struct that drifts from Xen's measured layout
//! (`xen-abi-layouts.txt`) fails the build instead of corrupting a guest.

/// `assert_layout!(Type, size = N, field = offset, ...)` checks `size_of` and `offset_of!` at
/// compile time.
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr $(, $($field:ident).+ = $off:expr)* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size, concat!("size of ", stringify!($ty)));
            $(
                assert!(
                    ::core::mem::offset_of!($ty, $($field).+) == $off,
                    concat!("offset of ", stringify!($ty), ".", stringify!($($field).+))
                );
            )*
        };
    };
}
