//! The safe wrapper over the C++ shim: one [`Dlib`] owns one detector and one shape predictor and
//! is used from one thread at a time (`Send`, not `Sync`).

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

use image::RgbImage;

use crate::{Error, Face, Result, N_POINTS};

extern "C" {
    fn dmm_dlib_new(predictor: *const c_char, err: *mut c_char, err_len: usize) -> *mut c_void;
    fn dmm_dlib_free(handle: *mut c_void);
    fn dmm_dlib_landmarks(
        handle: *mut c_void,
        rgb: *const u8,
        width: c_int,
        height: c_int,
        upsample: c_int,
        points: *mut f32,
        n_points: c_int,
        bbox: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn dmm_dlib_decode_jpeg(data: *const u8, len: usize, width: *mut c_int, height: *mut c_int, err: *mut c_char, err_len: usize) -> *mut u8;
    fn dmm_dlib_free_buffer(buffer: *mut u8);
}

/// Decodes `path` for the detector as Python's pipeline (`PIL.Image.open(p).convert('RGB')`)
/// does. JPEGs go through libjpeg-turbo, the library behind Pillow's JPEG decoder, at its default
/// settings (dlib's loader over the system libjpeg62-turbo), after dmm-data's checks for
/// truncation and size. Other files, and CMYK JPEGs, go through dmm-data's decoder. The `image`
/// crate's JPEG decoder rounds the IDCT and upsamples chroma differently, by a few levels per pixel,
/// and that moves dlib's points by up to several pixels.
pub fn decode_like_pil(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    decode_bytes_like_pil(path, &bytes)
}

/// [`decode_like_pil`] for photos (`dmm predict --detect`): also applies the EXIF orientation.
pub fn decode_oriented_like_pil(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let img = decode_bytes_like_pil(path, &bytes)?;
    let mut img = image::DynamicImage::ImageRgb8(img);
    img.apply_orientation(dmm_data::pipeline::orientation(path, &bytes)?);
    Ok(img.into_rgb8())
}

fn decode_bytes_like_pil(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    if dmm_data::pipeline::check(path, bytes)? != image::ImageFormat::Jpeg {
        return Ok(dmm_data::pipeline::decode_bytes(path, bytes)?);
    }
    let (mut width, mut height) = (0 as c_int, 0 as c_int);
    let mut err = [0 as c_char; 512];
    // SAFETY: `bytes` is live for the call; the outputs are writable; the returned buffer is
    // width·height·3 bytes from malloc, copied and then freed once by dmm_dlib_free_buffer.
    let pixels = unsafe {
        let buffer = dmm_dlib_decode_jpeg(bytes.as_ptr(), bytes.len(), &mut width, &mut height, err.as_mut_ptr(), err.len());
        if buffer.is_null() {
            None
        } else {
            let len = width as usize * height as usize * 3;
            let copy = std::slice::from_raw_parts(buffer, len).to_vec();
            dmm_dlib_free_buffer(buffer);
            Some(copy)
        }
    };
    match pixels.and_then(|p| RgbImage::from_raw(width as u32, height as u32, p)) {
        Some(img) => Ok(img),
        // CMYK, or anything libjpeg refuses: dmm-data's decoder decides (and names the problem).
        None => Ok(dmm_data::pipeline::decode_bytes(path, bytes)?),
    }
}

/// dlib's HOG frontal face detector and 68-point shape predictor.
pub struct Dlib {
    handle: *mut c_void,
}

// SAFETY: the handle is owned exclusively and dlib objects carry no thread affinity; `Dlib` is not
// `Sync`, so it is never used from two threads at once.
unsafe impl Send for Dlib {}

fn message(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Dlib {
    /// Loads the shape predictor model (e.g. [`crate::DEFAULT_PREDICTOR`]).
    pub fn new(predictor: &Path) -> Result<Self> {
        if !predictor.is_file() {
            return Err(Error::Io {
                path: predictor.to_path_buf(),
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "shape predictor not found (Debian: apt-get install libdlib-data)"),
            });
        }
        let path = CString::new(predictor.to_string_lossy().as_bytes()).map_err(|_| Error::Dlib("path contains a NUL byte".into()))?;
        let mut err = [0 as c_char; 512];
        // SAFETY: valid NUL-terminated path and a writable buffer of the stated length.
        let handle = unsafe { dmm_dlib_new(path.as_ptr(), err.as_mut_ptr(), err.len()) };
        if handle.is_null() {
            return Err(Error::Dlib(format!("{}: {}", predictor.display(), message(&err))));
        }
        Ok(Self { handle })
    }

    /// Landmarks of the largest face found with `upsample` pyramid-up steps (1 = the paper's
    /// setting, as `detector(img, 1)` in Python); `None` when no face is found.
    pub fn landmarks(&mut self, img: &RgbImage, upsample: u32) -> Result<Option<Face>> {
        let mut points = vec![0f32; 2 * N_POINTS];
        let mut bbox = [0f32; 4];
        let mut err = [0 as c_char; 512];
        // SAFETY: the image buffer holds width·height·3 bytes; the output buffers have the sizes
        // passed; the handle is live and used by this thread only.
        let n = unsafe {
            dmm_dlib_landmarks(
                self.handle,
                img.as_raw().as_ptr(),
                img.width() as c_int,
                img.height() as c_int,
                upsample as c_int,
                points.as_mut_ptr(),
                N_POINTS as c_int,
                bbox.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        match n {
            n if n < 0 => Err(Error::Dlib(message(&err))),
            0 => Ok(None),
            n => Ok(Some(Face { points, bbox, n_faces: n as usize })),
        }
    }
}

impl Drop for Dlib {
    fn drop(&mut self) {
        // SAFETY: the handle came from dmm_dlib_new and is freed once.
        unsafe { dmm_dlib_free(self.handle) }
    }
}
