use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    Buckets,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    Tenants,
}

fn main() {}
