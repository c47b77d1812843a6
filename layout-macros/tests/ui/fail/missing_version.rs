use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(description = "Buckets carry a storage layout")]
    Buckets,
    #[layout()]
    Tenants,
}

fn main() {}
