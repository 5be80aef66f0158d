// dmm-landmarks: a C ABI over dlib's HOG frontal face detector and 68-point shape predictor.
// One handle owns one detector and one predictor; handles are not shared between threads.
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/serialize.h>
// Debian's libdlib is built with libjpeg62-turbo; the loader's settings are libjpeg's defaults.
#define DLIB_JPEG_SUPPORT
#include <dlib/image_loader/jpeg_loader.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

struct dmm_dlib {
    dlib::frontal_face_detector detector;
    dlib::shape_predictor predictor;
};

static void set_error(char* err, size_t len, const std::string& msg) {
    if (err && len > 0) {
        std::strncpy(err, msg.c_str(), len - 1);
        err[len - 1] = '\0';
    }
}

extern "C" {

dmm_dlib* dmm_dlib_new(const char* predictor_path, char* err, size_t err_len) {
    try {
        dmm_dlib* h = new dmm_dlib();
        h->detector = dlib::get_frontal_face_detector();
        dlib::deserialize(predictor_path) >> h->predictor;
        return h;
    } catch (const std::exception& e) {
        set_error(err, err_len, e.what());
        return nullptr;
    }
}

void dmm_dlib_free(dmm_dlib* h) { delete h; }

// Detects faces in an RGB image (row-major, 3 bytes per pixel) with `upsample` pyramid-up steps,
// takes the largest box, and writes its 68 points (x0, y0, ...) to `points` and the box
// (left, top, right, bottom) to `box`. Returns the number of faces, or -1 on error.
int dmm_dlib_landmarks(dmm_dlib* h, const unsigned char* rgb, int width, int height, int upsample,
                       float* points, int n_points, float* box, char* err, size_t err_len) {
    try {
        dlib::array2d<dlib::rgb_pixel> img(height, width);
        for (int y = 0; y < height; ++y) {
            for (int x = 0; x < width; ++x) {
                const unsigned char* p = rgb + 3 * (static_cast<size_t>(y) * width + x);
                img[y][x] = dlib::rgb_pixel(p[0], p[1], p[2]);
            }
        }
        // As Python's detector(img, upsample): pyramid-up the image `upsample` times, detect, and
        // map the boxes back down (the second argument of the C++ detector is a threshold).
        dlib::pyramid_down<2> pyr;
        dlib::array2d<dlib::rgb_pixel> big;
        dlib::assign_image(big, img);
        for (int i = 0; i < upsample; ++i) dlib::pyramid_up(big, pyr);
        std::vector<dlib::rectangle> faces = h->detector(big);
        for (auto& f : faces) f = pyr.rect_down(f, upsample);
        if (faces.empty()) return 0;
        size_t best = 0;
        for (size_t i = 1; i < faces.size(); ++i) {
            if (faces[i].area() > faces[best].area()) best = i;
        }
        dlib::full_object_detection shape = h->predictor(img, faces[best]);
        if (static_cast<int>(shape.num_parts()) != n_points) {
            set_error(err, err_len, "the shape predictor gives " + std::to_string(shape.num_parts()) +
                                        " points, expected " + std::to_string(n_points));
            return -1;
        }
        for (int i = 0; i < n_points; ++i) {
            points[2 * i] = static_cast<float>(shape.part(i).x());
            points[2 * i + 1] = static_cast<float>(shape.part(i).y());
        }
        box[0] = faces[best].left();
        box[1] = faces[best].top();
        box[2] = faces[best].right();
        box[3] = faces[best].bottom();
        return static_cast<int>(faces.size());
    } catch (const std::exception& e) {
        set_error(err, err_len, e.what());
        return -1;
    }
}

// Decodes JPEG bytes with libjpeg(-turbo) at its default settings (accurate integer IDCT, fancy
// chroma upsampling): the pixels Pillow gives for `Image.open(p).convert('RGB')`. Returns a
// malloc'd buffer of width·height·3 RGB bytes (release it with dmm_dlib_free_buffer) and sets
// width and height, or returns null with the reason in `err`. Four-component (CMYK) files are
// refused: the caller decodes those itself.
unsigned char* dmm_dlib_decode_jpeg(const unsigned char* data, size_t len, int* width, int* height,
                                    char* err, size_t err_len) {
    try {
        dlib::jpeg_loader loader(data, len);
        if (!loader.is_gray() && !loader.is_rgb()) {
            set_error(err, err_len, "not a 1- or 3-component JPEG");
            return nullptr;
        }
        dlib::array2d<dlib::rgb_pixel> img;
        loader.get_image(img);
        const size_t w = img.nc(), h = img.nr();
        unsigned char* out = static_cast<unsigned char*>(std::malloc(w * h * 3 + 1));
        if (!out) {
            set_error(err, err_len, "out of memory");
            return nullptr;
        }
        for (size_t y = 0; y < h; ++y) {
            for (size_t x = 0; x < w; ++x) {
                unsigned char* p = out + 3 * (y * w + x);
                p[0] = img[y][x].red;
                p[1] = img[y][x].green;
                p[2] = img[y][x].blue;
            }
        }
        *width = static_cast<int>(w);
        *height = static_cast<int>(h);
        return out;
    } catch (const std::exception& e) {
        set_error(err, err_len, e.what());
        return nullptr;
    }
}

void dmm_dlib_free_buffer(unsigned char* buffer) { std::free(buffer); }

}  // extern "C"
