//! The CRI ImageService, served on `listen_path` for kubelet
//! (`--image-service-endpoint`) and forwarded call by call to
//! containerd's (`image_service_path`). A `PullImage` leaves its
//! credentials in the [`CriKeychain`] before it is forwarded, so they
//! are there when containerd prepares the image's snapshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::keychain::CriKeychain;

/// The proxy: containerd's ImageService behind, the keychain beside.
#[derive(Debug, Clone)]
pub struct CriProxy {
    backend: ImageServiceClient<Channel>,
    keychain: Arc<CriKeychain>,
}

impl CriProxy {
    /// A proxy to the ImageService on unix socket `backend`, connected
    /// on first use (containerd may start after ringstar).
    pub fn new(
        backend: &Path,
        keychain: Arc<CriKeychain>,
    ) -> Result<CriProxy, tonic::transport::Error> {
        let path: PathBuf = backend.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?.connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }),
        );
        Ok(CriProxy {
            backend: ImageServiceClient::new(channel),
            keychain,
        })
    }

    /// Serves the ImageService on `listener` until `stop` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::UnixListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(ImageServiceServer::new(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop,
            )
            .await
    }
}

#[tonic::async_trait]
impl ImageService for CriProxy {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        self.backend.clone().list_images(request.into_inner()).await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        self.backend
            .clone()
            .image_status(request.into_inner())
            .await
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let r = request.into_inner();
        if let (Some(image), Some(auth)) = (&r.image, &r.auth)
            && self.keychain.remember(&image.image, auth)
        {
            tracing::info!(image = %image.image, "credentials from kubelet's PullImage kept for its layers");
        }
        self.backend.clone().pull_image(r).await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        self.backend
            .clone()
            .remove_image(request.into_inner())
            .await
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        self.backend
            .clone()
            .image_fs_info(request.into_inner())
            .await
    }
}
