//! How the index keeps its state in a shard's view. Values are log items
//! (`ron_proto::index`), so the view has no format of its own:
//!
//! ```text
//! sites      name       → the site pointer item
//! assets     cid [32]   → the asset pointer item
//! providers  cid [32]   → (len u16 | provider item)*   (deleted when none is left)
//! ```

use crate::log::view::{ServiceView, ViewChanges};
use anyhow::Context as _;
use ron_proto::index::{Cid, IndexItem, ProviderRecord};
use ron_shards::index::{Changes, Index, Provider};

/// The index's tables, in `Service::TABLES` order.
pub const TABLES: &[&str] = &["sites", "assets", "providers"];
const SITES: usize = 0;
const ASSETS: usize = 1;
const PROVIDERS: usize = 2;

/// Puts what changed into a view write.
pub fn save(view: &mut ViewChanges, index: &Index, changes: Changes) {
    let mut value = Vec::new();
    for name in &changes.sites {
        let site = index.site(name).expect("a changed site is kept").clone();
        value.clear();
        IndexItem::Site(site).encode(&mut value);
        view.put(SITES, name.as_bytes(), &value);
    }
    for cid in &changes.assets {
        let asset = index.asset(cid).expect("a changed asset is kept").clone();
        value.clear();
        IndexItem::Asset(asset).encode(&mut value);
        view.put(ASSETS, &cid.0, &value);
    }
    let mut item = Vec::new();
    for cid in &changes.providers {
        let records = index.provider_records(cid);
        if records.is_empty() {
            view.delete(PROVIDERS, &cid.0);
            continue;
        }
        value.clear();
        for provider in records {
            item.clear();
            let Provider { node, ttl_s, expires_ms } = provider.clone();
            IndexItem::Provider(ProviderRecord { cid: *cid, node, ttl_s, expires_ms }).encode(&mut item);
            value.extend_from_slice(&(item.len() as u16).to_le_bytes());
            value.extend_from_slice(&item);
        }
        view.put(PROVIDERS, &cid.0, &value);
    }
}

/// Loads the index state a view kept.
pub fn load(index: &mut Index, view: &ServiceView) -> anyhow::Result<()> {
    view.each(SITES, |key, value| match IndexItem::decode(value) {
        Ok(IndexItem::Site(site)) if site.name.as_bytes() == key => {
            index.load_site(site);
            Ok(())
        }
        _ => anyhow::bail!("a site in the view does not decode"),
    })?;
    view.each(ASSETS, |key, value| match IndexItem::decode(value) {
        Ok(IndexItem::Asset(asset)) if asset.asset.0 == key => {
            index.load_asset(asset);
            Ok(())
        }
        _ => anyhow::bail!("an asset in the view does not decode"),
    })?;
    view.each(PROVIDERS, |key, value| {
        let cid = Cid(key.try_into().context("a providers key is not a cid")?);
        let mut list = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            let len = usize::from(u16::from_le_bytes(
                rest.get(..2).context("a provider's length")?.try_into().expect("2 bytes"),
            ));
            let item = rest.get(2..2 + len).context("a provider's bytes")?;
            match IndexItem::decode(item) {
                Ok(IndexItem::Provider(record)) if record.cid == cid => {
                    let ProviderRecord { node, ttl_s, expires_ms, .. } = record;
                    list.push(Provider { node, ttl_s, expires_ms });
                }
                _ => anyhow::bail!("a provider in the view does not decode"),
            }
            rest = &rest[2 + len..];
        }
        index.load_providers(cid, list);
        Ok(())
    })?;
    Ok(())
}
