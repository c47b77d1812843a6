use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "")]
    Initial,
    #[layout(version = 1, description = " \t ")]
    Buckets,
}

fn main() {}
