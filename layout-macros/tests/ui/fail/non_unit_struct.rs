use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    Buckets { layout: u8 },
}

fn main() {}
