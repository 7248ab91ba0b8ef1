//! Running an export: the service looks up the definition, prepares what the engine needs
//! (a client with the connection's unsealed key, the segments' sources, the hasher, the
//! limits) and hands it to the pipeline, which knows nothing of the service.

use std::sync::Arc;

use super::{Context, ServiceError};
use crate::pipeline::plan::SegmentSource;
use crate::pipeline::{
    self, ExportJob, JobError, PipelineError, Progress, RunControl, RunOptions, RunOutcome,
};
use crate::store::ExportDef;

impl Context {
    /// Runs an export now, in this process, under the process's run control.
    pub async fn run_export(
        &self,
        name: &str,
        options: RunOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, PipelineError> {
        self.run_export_with(name, options, &self.control, progress)
            .await
    }

    /// [`Context::run_export`] under a given control (the daemon's, per run).
    pub async fn run_export_with(
        &self,
        name: &str,
        options: RunOptions,
        control: &RunControl,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, PipelineError> {
        let export = self
            .find_export(name)
            .await
            .map_err(|e| JobError(Box::new(e)))?;
        let job = async {
            self.prepare_job(&export)
                .await
                .map_err(|e| JobError(Box::new(e)))
        };
        let dry_run = options.dry_run;
        let result = pipeline::run(&self.store, &export, options, control, progress, job).await;
        if !dry_run {
            self.raise_alerts(&export, &result).await;
        }
        result
    }

    /// What a run of `export` needs: failures here are recorded in the run.
    async fn prepare_job(&self, export: &ExportDef) -> Result<ExportJob, ServiceError> {
        let connection = self
            .store
            .connection_by_id(export.connection_id)
            .await?
            .ok_or_else(|| ServiceError::ConnectionGone {
                export: export.name.clone(),
                connection_id: export.connection_id,
            })?;
        let client = self.client(&connection)?;
        let mut segments = Vec::with_capacity(export.segments.len());
        for s in &export.segments {
            let def = self.find_segment(&s.name).await?;
            segments.push(SegmentSource {
                name: s.name.clone(),
                def: self.source_def(&def)?,
            });
        }
        Ok(ExportJob {
            client,
            segments,
            hasher: self.secret_key().profile_hasher(),
            max_profiles: self.settings.export.max_profiles,
            suppressed_recheck_days: self.settings.export.suppressed_recheck_days,
        })
    }
}
