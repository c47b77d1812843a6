use layout_core::LayoutFeature;

// A const parameter: unlike an unused type or lifetime parameter, rustc accepts it, so the
// derive's error is the only one.
#[derive(LayoutFeature)]
enum Catalog<const N: usize> {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
}

#[derive(LayoutFeature)]
enum Bounded
where
    u8: Copy,
{
    #[layout(version = 0, description = "Initial layout")]
    Initial,
}

fn main() {}
