/* egl-frame: the validation's "GUI app" from /nix/store.
 *
 * Renders one fixed frame offscreen with EGL (the Mesa surfaceless platform, an OpenGL
 * ES 3 context, a framebuffer object), reads it back and prints what drew it and a
 * checksum of its pixels, one key=value per line:
 *
 *   vendor=Mesa
 *   renderer=llvmpipe (LLVM 15.0.6, 256 bits)
 *   version=OpenGL ES 3.2 Mesa 22.3.6
 *   egl=<the libEGL.so.1 used>   driver=<the libEGL_mesa.so.0 used>
 *   size=64x64
 *   pixels=fnv1a64:<16 hex digits of FNV-1a over the RGBA bytes, bottom row first>
 *   probe=ok                     (four pixels have the colours the scene puts there)
 *
 * Like a Nix program on NixOS it finds the graphics driver only through
 * /run/opengl-driver: the Mesa EGL vendor library is loaded from
 * /run/opengl-driver/lib/libEGL_mesa.so.0 by absolute path, and glvnd is told to read
 * vendor files from /run/opengl-driver/share/glvnd/egl_vendor.d and Mesa to load DRI
 * drivers from /run/opengl-driver/lib/dri (what nixpkgs compiles in as defaults).
 * glvnd's dispatcher (libEGL.so.1, libGLdispatch.so.0) is part of the app, as libglvnd
 * is part of a Nix app's closure: <exe>/../lib, else /run/opengl-driver/lib. Nothing
 * is linked at build time (dlopen only), so it builds with gcc and libc6-dev alone and
 * needs only glibc from the machine.
 *
 * Exit status: 0 the frame was drawn and probed, 1 a step failed (named on stderr).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#define BRIDGE "/run/opengl-driver"
#define W 64
#define H 64

typedef int EGLint;
typedef unsigned int EGLBoolean, EGLenum;
typedef void *EGLDisplay, *EGLConfig, *EGLContext, *EGLSurface;
typedef unsigned int GLenum, GLuint, GLbitfield;
typedef int GLint, GLsizei;
typedef float GLfloat;
typedef unsigned char GLubyte;
typedef char GLchar;

enum {
    EGL_NONE = 0x3038, EGL_RENDERABLE_TYPE = 0x3040, EGL_OPENGL_ES3_BIT = 0x40,
    EGL_RED_SIZE = 0x3024, EGL_GREEN_SIZE = 0x3023, EGL_BLUE_SIZE = 0x3022,
    EGL_ALPHA_SIZE = 0x3021, EGL_CONTEXT_MAJOR_VERSION = 0x3098, EGL_OPENGL_ES_API = 0x30A0,
    EGL_VENDOR = 0x3053, EGL_VERSION = 0x3054, EGL_PLATFORM_SURFACELESS_MESA = 0x31DD,
};
enum {
    GL_VENDOR = 0x1F00, GL_RENDERER = 0x1F01, GL_VERSION = 0x1F02, GL_FRAMEBUFFER = 0x8D40,
    GL_RENDERBUFFER = 0x8D41, GL_RGBA8 = 0x8058, GL_COLOR_ATTACHMENT0 = 0x8CE0,
    GL_FRAMEBUFFER_COMPLETE = 0x8CD5, GL_COLOR_BUFFER_BIT = 0x4000, GL_RGBA = 0x1908,
    GL_UNSIGNED_BYTE = 0x1401, GL_FLOAT = 0x1406, GL_TRIANGLES = 0x0004,
    GL_VERTEX_SHADER = 0x8B31, GL_FRAGMENT_SHADER = 0x8B30, GL_COMPILE_STATUS = 0x8B81,
    GL_LINK_STATUS = 0x8B82, GL_SCISSOR_TEST = 0x0C11, GL_NO_ERROR = 0,
};

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "egl-frame: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void *open_lib(const char *path, int required)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!h && required)
        die("cannot load", dlerror());
    return h;
}

static const char *where(void *handle)
{
    struct link_map *lm = NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm)
        return "?";
    return lm->l_name;
}

/* glvnd from the app's own lib/ (its closure), else from the bridge */
static void *open_glvnd(const char *name)
{
    char exe[4096], path[4200];
    /* the path we were started by (no /proc needed: a bare chroot has none) */
    const char *execfn = (const char *)getauxval(AT_EXECFN);
    ssize_t n = execfn && execfn[0] == '/' ? (ssize_t)strlen(execfn) : -1;
    if (n > 0 && n < (ssize_t)sizeof exe)
        memcpy(exe, execfn, n);
    else
        n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0 && n < (ssize_t)sizeof exe) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof path, "%s/../lib/%s", exe, name);
            if (access(path, R_OK) == 0)
                return open_lib(path, 1);
        }
    }
    snprintf(path, sizeof path, BRIDGE "/lib/%s", name);
    return open_lib(path, 1);
}

#define PROC(type, name) \
    __typeof__(type) name = (__typeof__(type))get(#name); \
    if (!name) die("missing function", #name)

int main(void)
{
    setenv("__EGL_VENDOR_LIBRARY_DIRS", BRIDGE "/share/glvnd/egl_vendor.d", 0);
    setenv("LIBGL_DRIVERS_PATH", BRIDGE "/lib/dri", 0);
    setenv("GBM_BACKENDS_PATH", BRIDGE "/lib/gbm", 0);

    /* the driver, from the bridge only: glvnd's dlopen("libEGL_mesa.so.0") of the vendor
     * file then finds this already-loaded object by its soname */
    void *driver = open_lib(BRIDGE "/lib/libEGL_mesa.so.0", 0);
    if (!driver)
        die("no Mesa EGL driver at " BRIDGE "/lib/libEGL_mesa.so.0", dlerror());
    open_glvnd("libGLdispatch.so.0");
    void *egl = open_glvnd("libEGL.so.1");

    typedef void *(*GetProc)(const char *);
    GetProc get = (GetProc)dlsym(egl, "eglGetProcAddress");
    if (!get)
        die("libEGL.so.1 has no eglGetProcAddress", NULL);

    PROC(EGLDisplay (*)(EGLenum, void *, const EGLint *), eglGetPlatformDisplayEXT);
    PROC(EGLBoolean (*)(EGLDisplay, EGLint *, EGLint *), eglInitialize);
    PROC(EGLBoolean (*)(EGLenum), eglBindAPI);
    PROC(EGLBoolean (*)(EGLDisplay, const EGLint *, EGLConfig *, EGLint, EGLint *), eglChooseConfig);
    PROC(EGLContext (*)(EGLDisplay, EGLConfig, EGLContext, const EGLint *), eglCreateContext);
    PROC(EGLBoolean (*)(EGLDisplay, EGLSurface, EGLSurface, EGLContext), eglMakeCurrent);
    PROC(const char *(*)(EGLDisplay, EGLint), eglQueryString);
    PROC(EGLint (*)(void), eglGetError);
    PROC(EGLBoolean (*)(EGLDisplay), eglTerminate);

    EGLDisplay dpy = eglGetPlatformDisplayEXT(EGL_PLATFORM_SURFACELESS_MESA, NULL, NULL);
    EGLint major, minor;
    if (!dpy || !eglInitialize(dpy, &major, &minor)) {
        char code[32];
        snprintf(code, sizeof code, "EGL error 0x%x", eglGetError());
        die("no surfaceless EGL display", code);
    }
    if (!eglBindAPI(EGL_OPENGL_ES_API))
        die("eglBindAPI(OpenGL ES) failed", NULL);
    const EGLint cattr[] = {EGL_RENDERABLE_TYPE, EGL_OPENGL_ES3_BIT, EGL_RED_SIZE, 8,
                            EGL_GREEN_SIZE, 8, EGL_BLUE_SIZE, 8, EGL_ALPHA_SIZE, 8, EGL_NONE};
    /* the frame goes to a framebuffer object, so no config is needed
     * (EGL_KHR_no_config_context) when the platform offers none */
    EGLConfig cfg = NULL;
    EGLint ncfg = 0;
    if (!eglChooseConfig(dpy, cattr, &cfg, 1, &ncfg) || ncfg < 1)
        cfg = NULL;
    const EGLint xattr[] = {EGL_CONTEXT_MAJOR_VERSION, 3, EGL_NONE};
    EGLContext ctx = eglCreateContext(dpy, cfg, NULL, xattr);
    if (!ctx)
        die("eglCreateContext failed", NULL);
    if (!eglMakeCurrent(dpy, NULL, NULL, ctx))
        die("eglMakeCurrent without a surface failed", NULL);

    PROC(const GLubyte *(*)(GLenum), glGetString);
    PROC(GLenum (*)(void), glGetError);
    PROC(void (*)(GLsizei, GLuint *), glGenFramebuffers);
    PROC(void (*)(GLenum, GLuint), glBindFramebuffer);
    PROC(void (*)(GLsizei, GLuint *), glGenRenderbuffers);
    PROC(void (*)(GLenum, GLuint), glBindRenderbuffer);
    PROC(void (*)(GLenum, GLenum, GLsizei, GLsizei), glRenderbufferStorage);
    PROC(void (*)(GLenum, GLenum, GLenum, GLuint), glFramebufferRenderbuffer);
    PROC(GLenum (*)(GLenum), glCheckFramebufferStatus);
    PROC(void (*)(GLint, GLint, GLsizei, GLsizei), glViewport);
    PROC(void (*)(GLint, GLint, GLsizei, GLsizei), glScissor);
    PROC(void (*)(GLenum), glEnable);
    PROC(void (*)(GLenum), glDisable);
    PROC(void (*)(GLfloat, GLfloat, GLfloat, GLfloat), glClearColor);
    PROC(void (*)(GLbitfield), glClear);
    PROC(GLuint (*)(GLenum), glCreateShader);
    PROC(void (*)(GLuint, GLsizei, const GLchar *const *, const GLint *), glShaderSource);
    PROC(void (*)(GLuint), glCompileShader);
    PROC(void (*)(GLuint, GLenum, GLint *), glGetShaderiv);
    PROC(GLuint (*)(void), glCreateProgram);
    PROC(void (*)(GLuint, GLuint), glAttachShader);
    PROC(void (*)(GLuint, GLuint, const GLchar *), glBindAttribLocation);
    PROC(void (*)(GLuint), glLinkProgram);
    PROC(void (*)(GLuint, GLenum, GLint *), glGetProgramiv);
    PROC(void (*)(GLuint), glUseProgram);
    PROC(void (*)(GLuint, GLint, GLenum, unsigned char, GLsizei, const void *), glVertexAttribPointer);
    PROC(void (*)(GLuint), glEnableVertexAttribArray);
    PROC(void (*)(GLenum, GLint, GLsizei), glDrawArrays);
    PROC(void (*)(GLint, GLint, GLsizei, GLsizei, GLenum, GLenum, void *), glReadPixels);
    PROC(void (*)(void), glFinish);

    GLuint fbo, rb;
    glGenFramebuffers(1, &fbo);
    glBindFramebuffer(GL_FRAMEBUFFER, fbo);
    glGenRenderbuffers(1, &rb);
    glBindRenderbuffer(GL_RENDERBUFFER, rb);
    glRenderbufferStorage(GL_RENDERBUFFER, GL_RGBA8, W, H);
    glFramebufferRenderbuffer(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_RENDERBUFFER, rb);
    if (glCheckFramebufferStatus(GL_FRAMEBUFFER) != GL_FRAMEBUFFER_COMPLETE)
        die("the framebuffer object is incomplete", NULL);
    glViewport(0, 0, W, H);

    /* the scene: dark blue, a red square (scissored clear), a green triangle (shaders) */
    glClearColor(0.0f, 0.0f, 0.25f, 1.0f);
    glClear(GL_COLOR_BUFFER_BIT);
    glEnable(GL_SCISSOR_TEST);
    glScissor(4, 4, 16, 16);
    glClearColor(1.0f, 0.0f, 0.0f, 1.0f);
    glClear(GL_COLOR_BUFFER_BIT);
    glDisable(GL_SCISSOR_TEST);

    static const char *vs = "#version 100\nattribute vec2 pos;\n"
                            "void main() { gl_Position = vec4(pos, 0.0, 1.0); }\n";
    static const char *fs = "#version 100\nprecision mediump float;\n"
                            "void main() { gl_FragColor = vec4(0.0, 1.0, 0.0, 1.0); }\n";
    GLint ok = 0;
    GLuint v = glCreateShader(GL_VERTEX_SHADER), f = glCreateShader(GL_FRAGMENT_SHADER);
    glShaderSource(v, 1, &vs, NULL);
    glCompileShader(v);
    glGetShaderiv(v, GL_COMPILE_STATUS, &ok);
    if (!ok)
        die("the vertex shader does not compile", NULL);
    glShaderSource(f, 1, &fs, NULL);
    glCompileShader(f);
    glGetShaderiv(f, GL_COMPILE_STATUS, &ok);
    if (!ok)
        die("the fragment shader does not compile", NULL);
    GLuint prog = glCreateProgram();
    glAttachShader(prog, v);
    glAttachShader(prog, f);
    glBindAttribLocation(prog, 0, "pos");
    glLinkProgram(prog);
    glGetProgramiv(prog, GL_LINK_STATUS, &ok);
    if (!ok)
        die("the program does not link", NULL);
    glUseProgram(prog);
    /* pixel-aligned corners (NDC multiples of 1/32 on a 64-pixel side) */
    static const GLfloat tri[] = {0.0f, 0.0f, 0.875f, 0.0f, 0.0f, 0.875f};
    glVertexAttribPointer(0, 2, GL_FLOAT, 0, 0, tri);
    glEnableVertexAttribArray(0);
    glDrawArrays(GL_TRIANGLES, 0, 3);
    glFinish();

    static unsigned char px[W * H * 4];
    glReadPixels(0, 0, W, H, GL_RGBA, GL_UNSIGNED_BYTE, px);
    GLenum err = glGetError();
    if (err != GL_NO_ERROR) {
        char code[32];
        snprintf(code, sizeof code, "GL error 0x%x", err);
        die("rendering failed", code);
    }
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < sizeof px; i++) {
        hash ^= px[i];
        hash *= 0x100000001b3ULL;
    }
#define AT(x, y) (px + 4 * ((y) * W + (x)))
    int probe = AT(10, 10)[0] == 255 && AT(10, 10)[1] == 0 &&          /* red square */
                AT(40, 36)[1] == 255 && AT(40, 36)[0] == 0 &&          /* green triangle */
                AT(60, 60)[2] == 64 && AT(60, 60)[1] == 0 &&           /* blue background */
                AT(2, 60)[2] == 64;

    printf("vendor=%s\n", (const char *)glGetString(GL_VENDOR));
    printf("renderer=%s\n", (const char *)glGetString(GL_RENDERER));
    printf("version=%s\n", (const char *)glGetString(GL_VERSION));
    printf("egl=%s (EGL %s, %s)\n", where(egl), eglQueryString(dpy, EGL_VERSION),
           eglQueryString(dpy, EGL_VENDOR));
    printf("driver=%s\n", where(driver));
    printf("size=%dx%d\n", W, H);
    printf("pixels=fnv1a64:%016llx\n", (unsigned long long)hash);
    printf("probe=%s\n", probe ? "ok" : "wrong colours");
    eglMakeCurrent(dpy, NULL, NULL, NULL);
    eglTerminate(dpy);
    return probe ? 0 : 1;
}
