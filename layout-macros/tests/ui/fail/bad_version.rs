use layout_core::LayoutFeature;

const ONE: u32 = 1;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = "0", description = "A string")]
    Str,
    #[layout(version = -1, description = "Negative")]
    Negative,
    #[layout(version = 4294967296, description = "Too large for a u32")]
    TooLarge,
    #[layout(version = 1.0, description = "A float")]
    Float,
    #[layout(version = 2i64, description = "Another integer type")]
    Suffixed,
    #[layout(version = ONE, description = "A constant")]
    Constant,
}

fn main() {}
