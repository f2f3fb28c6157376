/* Test-only shim for Wine 8.0, which lacks bcryptprimitives.dll: Rust's std (>= 1.78) on
 * Windows imports ProcessPrng from it. Forwards to RtlGenRandom (SystemFunction036), which
 * Wine implements. Never shipped; CI copies it into the Wine prefix's system32. */
#include <windows.h>

typedef BOOLEAN (WINAPI *rtl_gen_random_fn)(PVOID, ULONG);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    static rtl_gen_random_fn gen;
    if (!gen) {
        HMODULE advapi = LoadLibraryA("advapi32.dll");
        if (!advapi) return FALSE;
        gen = (rtl_gen_random_fn)GetProcAddress(advapi, "SystemFunction036");
        if (!gen) return FALSE;
    }
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!gen(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
