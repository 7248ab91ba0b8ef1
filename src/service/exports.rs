//! Exports (Customer Insights: Data > Exports). Before saving, the definition is checked
//! against ActiveCampaign (the list and custom fields exist) and against its segments (every
//! mapped column exists and has a type that can be exported). Only those reads reach ActiveCampaign; saving runs nothing.

use serde::Serialize;

use super::access::Role;
use super::segments::stored_column_types;
use super::{Context, ServiceError, check_name};
use crate::scheduler::Schedule;
use crate::store::connections::ConnectionStatus;
pub use crate::store::exports::OnLeave;
use crate::store::exports::{ExportSpec, FieldMapping};
use crate::store::{ExportDef, RunRecord};

/// An export as the user describes it (names, not ids).
#[derive(Debug, Clone)]
pub struct ExportInput {
    pub name: String,
    pub connection: String,
    pub list_id: i64,
    pub segments: Vec<String>,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    /// (ActiveCampaign custom field id, segment column)
    pub fields: Vec<(i64, String)>,
    pub tags: Vec<String>,
    pub schedule: Option<String>,
    /// IANA time zone of the schedule; `None` follows `schedule.timezone`.
    pub timezone: Option<String>,
    pub on_leave: OnLeave,
    pub enabled: bool,
}

/// Changes to an export; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ExportPatch {
    pub connection: Option<String>,
    pub list_id: Option<i64>,
    pub segments: Option<Vec<String>>,
    pub email: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub fields: Option<Vec<(i64, String)>>,
    pub tags: Option<Vec<String>>,
    pub schedule: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    pub on_leave: Option<OnLeave>,
}

/// A profile field an export maps from a segment column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedField {
    Email,
    FirstName,
    LastName,
    Phone,
    /// An ActiveCampaign custom field, by id.
    Custom(i64),
}

impl std::fmt::Display for MappedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MappedField::Email => f.write_str("email"),
            MappedField::FirstName => f.write_str("first name"),
            MappedField::LastName => f.write_str("last name"),
            MappedField::Phone => f.write_str("phone"),
            MappedField::Custom(id) => write!(f, "custom field {id}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportView {
    #[serde(flatten)]
    pub def: ExportDef,
    pub last_run: Option<RunRecord>,
}

/// Parses a custom field mapping such as `12=loyalty_tier`.
pub fn parse_field_mapping(text: &str) -> Result<(i64, String), ServiceError> {
    let bad = || ServiceError::BadFieldMapping {
        text: text.to_owned(),
    };
    let (id, column) = text.split_once('=').ok_or_else(bad)?;
    let id: i64 = id.trim().parse().map_err(|_| bad())?;
    let column = column.trim();
    if id <= 0 || column.is_empty() {
        return Err(bad());
    }
    Ok((id, column.to_owned()))
}

impl Context {
    pub async fn find_export(&self, name: &str) -> Result<ExportDef, ServiceError> {
        self.store
            .export(name)
            .await?
            .ok_or_else(|| ServiceError::not_found("export", name))
    }

    /// Checks a definition against the store and ActiveCampaign and resolves its ids.
    async fn check_export(&self, input: &ExportInput) -> Result<ExportSpec, ServiceError> {
        check_name("export", &input.name)?;
        if input.email.trim().is_empty() {
            return Err(ServiceError::MissingEmailColumn);
        }
        if input.segments.is_empty() {
            return Err(ServiceError::NoSegment);
        }
        if input.list_id <= 0 {
            return Err(ServiceError::InvalidListId(input.list_id));
        }
        // Stored by its canonical name, so the daemon and `status` read back what was checked.
        let timezone = match &input.timezone {
            Some(zone) => Some(Schedule::parse_tz(zone.trim()).map_err(ServiceError::BadTimezone)?),
            None => None,
        };
        let schedule = match &input.schedule {
            Some(expr) => {
                Schedule::parse(expr, timezone.unwrap_or_else(|| self.settings.timezone()))
                    .map_err(ServiceError::BadSchedule)?;
                Some(expr.trim().to_owned())
            }
            None => None,
        };
        // Segments exist and carry every mapped column.
        let mut mapped: Vec<(MappedField, &str)> = vec![(MappedField::Email, input.email.as_str())];
        for (field, column) in [
            (MappedField::FirstName, &input.first_name),
            (MappedField::LastName, &input.last_name),
            (MappedField::Phone, &input.phone),
        ] {
            if let Some(column) = column {
                mapped.push((field, column.as_str()));
            }
        }
        for (id, column) in &input.fields {
            mapped.push((MappedField::Custom(*id), column.as_str()));
        }
        let mut segment_ids = Vec::new();
        for name in &input.segments {
            if input.segments.iter().filter(|s| *s == name).count() > 1 {
                return Err(ServiceError::SegmentTwice {
                    segment: name.clone(),
                });
            }
            let segment = self.find_segment(name).await?;
            // An export sends its segments' rows out: a contributor may send only what they
            // could read themselves.
            self.require_segment_use(&segment)?;
            // Recorded when the segment was saved; a segment saved before they were is
            // checked when a run opens it.
            let types = stored_column_types(&segment);
            let columns = segment.columns.0;
            for (field, column) in &mapped {
                let Some(i) = columns.iter().position(|c| c == column) else {
                    return Err(ServiceError::UnknownColumn {
                        field: *field,
                        column: (*column).to_owned(),
                        segment: name.clone(),
                        columns,
                    });
                };
                if let Some(ty) = types.as_ref().and_then(|t| t.get(i))
                    && ty.refusal().is_some()
                {
                    return Err(ServiceError::NotExportableColumn {
                        field: *field,
                        column: (*column).to_owned(),
                        segment: name.clone(),
                        column_type: Box::new(ty.clone()),
                    });
                }
            }
            segment_ids.push(segment.id);
        }
        // The connection is usable, the list and fields exist in ActiveCampaign.
        let connection = self.find_connection(&input.connection).await?;
        self.require_on(
            &connection,
            Role::Contributor,
            "change exports on this connection",
        )?;
        if connection.status == ConnectionStatus::Rejected {
            return Err(ServiceError::ConnectionRejected {
                connection: connection.name,
                detail: connection.status_detail,
            });
        }
        let client = self.client(&connection)?;
        let list = client.list(input.list_id).await?;
        if !input.fields.is_empty() {
            let known = client.fields().await?;
            for (id, _) in &input.fields {
                if !known.iter().any(|f| f.id == id.to_string()) {
                    return Err(ServiceError::UnknownCustomField {
                        id: *id,
                        host: client.host().to_owned(),
                        known: known.len(),
                    });
                }
            }
        }
        let mut fields: Vec<FieldMapping> = Vec::new();
        for (id, column) in &input.fields {
            if fields.iter().any(|f| f.field_id == *id) {
                return Err(ServiceError::FieldMappedTwice { id: *id });
            }
            fields.push(FieldMapping {
                field_id: *id,
                column: column.clone(),
            });
        }
        let tags: Vec<String> = input
            .tags
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        Ok(ExportSpec {
            name: input.name.clone(),
            connection_id: connection.id,
            list_id: input.list_id,
            list_name: list.name,
            email_column: input.email.clone(),
            first_name_column: input.first_name.clone(),
            last_name_column: input.last_name.clone(),
            phone_column: input.phone.clone(),
            fields,
            tags,
            segment_ids,
            on_leave: input.on_leave,
            schedule,
            timezone: timezone.map(|tz| tz.name().to_owned()),
            enabled: input.enabled,
        })
    }

    pub async fn add_export(&self, input: ExportInput) -> Result<ExportView, ServiceError> {
        self.require(Role::Contributor, "add exports")?;
        check_name("export", &input.name)?;
        if self.store.name_taken("exports", &input.name).await? {
            return Err(ServiceError::Duplicate {
                kind: "export",
                name: input.name,
            });
        }
        let spec = self.check_export(&input).await?;
        if self.store.insert_export(&spec).await?.is_none() {
            return Err(ServiceError::Duplicate {
                kind: "export",
                name: input.name,
            });
        }
        tracing::info!(export = %input.name, "Export saved");
        self.show_export(&input.name).await
    }

    pub async fn update_export(
        &self,
        name: &str,
        patch: ExportPatch,
    ) -> Result<ExportView, ServiceError> {
        self.require(Role::Contributor, "update exports")?;
        let current = self.find_export(name).await?;
        self.require_export(&current, Role::Contributor, "update this export")
            .await?;
        let input = ExportInput {
            name: current.name.clone(),
            connection: patch.connection.unwrap_or(current.connection),
            list_id: patch.list_id.unwrap_or(current.list_id),
            segments: patch
                .segments
                .unwrap_or_else(|| current.segments.iter().map(|s| s.name.clone()).collect()),
            email: patch.email.unwrap_or(current.email_column),
            first_name: patch.first_name.unwrap_or(current.first_name_column),
            last_name: patch.last_name.unwrap_or(current.last_name_column),
            phone: patch.phone.unwrap_or(current.phone_column),
            fields: patch.fields.unwrap_or_else(|| {
                current
                    .fields
                    .iter()
                    .map(|f| (f.field_id, f.column.clone()))
                    .collect()
            }),
            tags: patch.tags.unwrap_or(current.tags),
            schedule: patch.schedule.unwrap_or(current.schedule),
            timezone: patch.timezone.unwrap_or(current.timezone),
            on_leave: patch.on_leave.unwrap_or(current.on_leave),
            enabled: current.enabled,
        };
        let spec = self.check_export(&input).await?;
        if self.store.update_export(current.id, &spec).await? {
            tracing::info!(export = %name, "Destination changed: delivery state reset; the next run sends every member");
        }
        self.show_export(name).await
    }

    pub async fn set_export_enabled(&self, name: &str, enabled: bool) -> Result<(), ServiceError> {
        let action = if enabled {
            "enable exports"
        } else {
            "disable exports"
        };
        self.require(Role::Contributor, action)?;
        let export = self.find_export(name).await?;
        self.require_export(&export, Role::Contributor, action)
            .await?;
        self.store
            .set_export_enabled(export.id, &export.name, enabled)
            .await?;
        Ok(())
    }

    /// Removes an export and purges its delivery state.
    pub async fn remove_export(&self, name: &str) -> Result<(), ServiceError> {
        self.require(Role::Contributor, "remove exports")?;
        let export = self.find_export(name).await?;
        self.require_export(&export, Role::Contributor, "remove this export")
            .await?;
        self.store.remove_export(export.id, name).await?;
        Ok(())
    }

    /// The exports the actor may see: on the connections they may use.
    pub async fn list_exports(&self) -> Result<Vec<ExportView>, ServiceError> {
        self.require(Role::Viewer, "list exports")?;
        let usable = self.usable_connections().await?;
        let mut out = Vec::new();
        for def in self.store.exports().await? {
            if usable
                .as_ref()
                .is_some_and(|ids| !ids.contains(&def.connection_id))
            {
                continue;
            }
            let last_run = self.store.last_run(def.id).await?;
            out.push(ExportView { def, last_run });
        }
        Ok(out)
    }

    pub async fn show_export(&self, name: &str) -> Result<ExportView, ServiceError> {
        self.require(Role::Viewer, "see exports")?;
        let def = self.find_export(name).await?;
        self.require_export(&def, Role::Viewer, "see this export")
            .await?;
        let last_run = self.store.last_run(def.id).await?;
        Ok(ExportView { def, last_run })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_mappings_need_a_numeric_id_and_a_column() {
        assert_eq!(
            parse_field_mapping("12=tier").expect("ok"),
            (12, "tier".to_owned())
        );
        for bad in ["12", "x=tier", "12=", "=tier", "-1=tier"] {
            assert!(parse_field_mapping(bad).is_err(), "{bad}");
        }
    }
}
