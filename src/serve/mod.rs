//! `mim serve`: a local web page to look at a pretrained model. Pick a dataset image or drop in a
//! photo, hide patches by clicking or by drawing a random/block/grid mask, and see the
//! reconstruction, the [CLS] token's attention per layer and head, the nearest training images and, for
//! BEiT, the visual tokens and the model's guesses at the hidden ones.
//!
//! One worker thread owns the model ([`Viewer`]); HTTP handlers send it jobs. Each kind of view
//! (reconstruction, attention, neighbours, tokens) carries a generation number: a job whose request has
//! been overtaken by a newer one of the same kind is answered `409 superseded` without running,
//! so quick clicks never queue model work — the latest request wins.

mod viewer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;

use crate::train::methods::Method;
use tokio::sync::oneshot;

pub use viewer::{
    Attention, DatasetInfo, ImageRef, Info, MAX_UPLOADS, Neighbour, Reconstruction, Tokens, Viewer, ViewerConfig,
};

/// A model shipped in `pretrained/` (paths relative to the repository's root): trained by mim on
/// the full Fashion-MNIST, half precision (see pretrained/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// The weights file.
    pub weights: &'static str,
    /// The visual tokenizer a BEiT was trained with (a mim tokenizer checkpoint).
    pub tokenizer: Option<&'static str>,
}

/// The shipped model of `method`, which `mim serve` shows when no checkpoint is given.
pub fn shipped(method: Method) -> Shipped {
    match method {
        Method::Mae => Shipped { weights: "pretrained/mae_tiny_28_fmnist.safetensors", tokenizer: None },
        Method::Beit => Shipped {
            weights: "pretrained/beit_tiny_28_fmnist.safetensors",
            tokenizer: Some("pretrained/vq_tiny_28_fmnist.mim"),
        },
        Method::Simmim => Shipped { weights: "pretrained/simmim_swin_tiny_28_fmnist.safetensors", tokenizer: None },
    }
}

impl Shipped {
    /// The viewer of this model on the shipped Fashion-MNIST subset, with the default settings.
    pub fn viewer(self) -> ViewerConfig {
        ViewerConfig {
            checkpoint: self.weights.into(),
            data: Some(crate::data::SHIPPED_SUBSET.into()),
            split: crate::data::Split::Test,
            neighbour_pool: ViewerConfig::NEIGHBOURS,
            scale: ViewerConfig::SCALE,
            tokenizer: self.tokenizer.map(std::path::PathBuf::from),
        }
    }
}

/// The page: plain HTML, CSS and JavaScript, shipped inside the binary.
const PAGE: &str = include_str!("page.html");

/// Where and how `mim serve` listens.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model and data.
    pub viewer: ViewerConfig,
    /// Address to listen on (loopback unless the user asks otherwise).
    pub host: IpAddr,
    /// Port (0: any free port).
    pub port: u16,
    /// Largest upload accepted, in bytes.
    pub upload_limit: usize,
}

impl ServeConfig {
    /// The default upload limit, in MB.
    pub const UPLOAD_LIMIT_MB: f64 = 20.0;
}

/// A running viewer; dropping it stops the server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Blocks until the server stops (it runs until the process is interrupted).
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads the model and data (`progress` hears what is being prepared), binds the address and
/// serves the page in the background.
pub fn start(cfg: ServeConfig, progress: &mut dyn FnMut(&str)) -> Result<Server> {
    // Bind first: a taken port is reported before minutes of feature extraction.
    let listener = std::net::TcpListener::bind((cfg.host, cfg.port)).with_context(|| {
        format!("cannot listen on {}:{}: pick another --port (0 takes any free one)", cfg.host, cfg.port)
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let (jobs, info) = spawn_worker(cfg.viewer.clone(), progress)?;
    let state = Arc::new(AppState { jobs, info, generations: Default::default(), upload_limit: cfg.upload_limit });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/info", get(model_info))
        .route("/api/image/{kind}/{index}", get(image))
        .route("/api/upload", post(upload))
        .route("/api/mask", post(mask))
        .route("/api/reconstruct", post(reconstruct))
        .route("/api/attention", post(attention))
        .route("/api/tokens", post(tokens))
        .route("/api/neighbours", post(neighbours))
        .layer(DefaultBodyLimit::max(cfg.upload_limit))
        .with_state(state);

    let (shutdown, stop) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_io().build()?;
    let thread = std::thread::Builder::new().name("mim-serve".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
                .context("the server stopped")
        })
    })?;
    Ok(Server { addr, shutdown: Some(shutdown), thread: Some(thread) })
}

/// A job for the worker that owns the model.
type Job = Box<dyn FnOnce(&mut Viewer) + Send>;

/// Starts the thread that owns the [`Viewer`] (its feature encoder is not `Send`) and waits until
/// the model is loaded.
fn spawn_worker(cfg: ViewerConfig, progress: &mut dyn FnMut(&str)) -> Result<(std::sync::mpsc::Sender<Job>, Info)> {
    let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
    let (ready, loaded) = std::sync::mpsc::channel::<std::result::Result<Info, String>>();
    let (say, heard) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new().name("mim-viewer".into()).spawn(move || {
        let viewer = Viewer::new(&cfg, &mut |m| {
            let _ = say.send(m.to_string());
        });
        drop(say);
        match viewer {
            Ok(mut viewer) => {
                let _ = ready.send(Ok(viewer.info().clone()));
                for job in inbox {
                    job(&mut viewer);
                }
            }
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}")));
            }
        }
    })?;
    for message in heard {
        progress(&message);
    }
    let info = loaded.recv().context("the viewer thread stopped")?.map_err(anyhow::Error::msg)?;
    Ok((jobs, info))
}

struct AppState {
    jobs: std::sync::mpsc::Sender<Job>,
    info: Info,
    /// The newest request of each view: reconstruction, attention, neighbours, tokens.
    generations: Arc<[AtomicU64; 4]>,
    upload_limit: usize,
}

/// The views whose older requests are dropped when a newer one comes.
#[derive(Clone, Copy)]
enum View {
    Reconstruction = 0,
    Attention = 1,
    Neighbours = 2,
    Tokens = 3,
}

/// An error as the page shows it: `{"error": "..."}` (or `{"superseded": true}`).
struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn bad(e: impl std::fmt::Display) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body: serde_json::json!({ "error": e.to_string() }) }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::bad(format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

impl AppState {
    /// Runs `f` on the worker; with `view`, only if no newer request of that view came meanwhile.
    async fn run<T: Send + 'static>(
        &self,
        view: Option<View>,
        f: impl FnOnce(&mut Viewer) -> Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let ticket = view.map(|v| (v as usize, self.generations[v as usize].fetch_add(1, Ordering::SeqCst) + 1));
        let generations = Arc::clone(&self.generations);
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |viewer: &mut Viewer| {
            let overtaken = ticket.is_some_and(|(v, mine)| generations[v].load(Ordering::SeqCst) != mine);
            let _ = reply.send(if overtaken { Err(None) } else { f(viewer).map_err(Some) });
        });
        self.jobs.send(job).map_err(|_| ApiError::bad("the viewer stopped: restart mim serve"))?;
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Some(e))) => Err(e.into()),
            Ok(Err(None)) => {
                Err(ApiError { status: StatusCode::CONFLICT, body: serde_json::json!({ "superseded": true }) })
            }
            Err(_) => Err(ApiError::bad("the viewer stopped: restart mim serve")),
        }
    }
}

async fn model_info(State(state): State<Arc<AppState>>) -> Json<Info> {
    Json(state.info.clone())
}

/// `GET /api/image/{dataset|train|upload}/{index}`: the image as a PNG. Images are addressed by
/// index only, so the page cannot name a file outside the dataset.
async fn image(State(state): State<Arc<AppState>>, Path((kind, index)): Path<(String, String)>) -> ApiResult<Response> {
    let index: usize =
        index.trim_end_matches(".png").parse().map_err(|_| ApiError::bad("the index is not a number"))?;
    let image = match kind.as_str() {
        "dataset" => ImageRef::Dataset(index),
        "train" => ImageRef::Train(index),
        "upload" => ImageRef::Upload(index),
        other => return Err(ApiError::bad(format!("unknown image kind '{other}': use dataset, train or upload"))),
    };
    let png = state.run(None, move |v| v.image_png(image)).await?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], png).into_response())
}

/// `POST /api/upload` with the file as the body: `{"id": n}`.
async fn upload(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = state.upload_limit;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad(format!(
                "the file is larger than the upload limit ({:.1} MB): use a smaller photo or restart mim serve with a \
                 larger --upload-limit-mb",
                limit as f64 / 1e6
            ))
        } else {
            ApiError::bad(format!("cannot read the upload: {e}"))
        }
    })?;
    let id = state.run(None, move |v| v.add_upload(&bytes)).await?;
    Ok(Json(serde_json::json!({ "id": id })))
}

#[derive(Deserialize)]
struct MaskRequest {
    strategy: String,
    ratio: f64,
    seed: u64,
}

/// `POST /api/mask {strategy, ratio, seed}`: `{"removed": [bool; patches]}`.
async fn mask(State(state): State<Arc<AppState>>, Json(r): Json<MaskRequest>) -> ApiResult<Json<serde_json::Value>> {
    if !(0.0..1.0).contains(&r.ratio) {
        return Err(ApiError::bad(format!("mask ratio {} is outside [0, 1)", r.ratio)));
    }
    let removed = state.run(None, move |v| v.mask(&r.strategy, r.ratio, r.seed)).await?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

#[derive(Deserialize)]
struct ReconstructRequest {
    image: ImageRef,
    removed: Vec<bool>,
}

/// `POST /api/reconstruct {image, removed}`: the picture as a data URL, with timings.
async fn reconstruct(
    State(state): State<Arc<AppState>>,
    Json(r): Json<ReconstructRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let rec = state.run(Some(View::Reconstruction), move |v| v.reconstruct(r.image, &r.removed)).await?;
    with_picture(&rec, &rec.png)
}

/// `POST /api/tokens {image, removed}`: a BEiT's visual tokens and predictions, with the picture
/// as a data URL.
async fn tokens(
    State(state): State<Arc<AppState>>,
    Json(r): Json<ReconstructRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let tokens = state.run(Some(View::Tokens), move |v| v.tokens(r.image, &r.removed)).await?;
    with_picture(&tokens, &tokens.png)
}

/// `answer` as JSON with `png` as a data URL the page shows directly.
fn with_picture(answer: &impl serde::Serialize, png: &[u8]) -> ApiResult<Json<serde_json::Value>> {
    let mut json = serde_json::to_value(answer).map_err(|e| ApiError::bad(e.to_string()))?;
    json["png"] = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)).into();
    Ok(Json(json))
}

#[derive(Deserialize)]
struct ImageRequest {
    image: ImageRef,
    #[serde(default = "default_k")]
    k: usize,
}

fn default_k() -> usize {
    8
}

/// `POST /api/attention {image}`: `{maps: [layer][head][patch], millis}`.
async fn attention(State(state): State<Arc<AppState>>, Json(r): Json<ImageRequest>) -> ApiResult<Json<Attention>> {
    Ok(Json(state.run(Some(View::Attention), move |v| v.attention(r.image)).await?))
}

/// `POST /api/neighbours {image, k}`: the `k` nearest training images.
async fn neighbours(
    State(state): State<Arc<AppState>>,
    Json(r): Json<ImageRequest>,
) -> ApiResult<Json<Vec<Neighbour>>> {
    let k = r.k.clamp(1, 64);
    Ok(Json(state.run(Some(View::Neighbours), move |v| v.neighbours(r.image, k)).await?))
}
