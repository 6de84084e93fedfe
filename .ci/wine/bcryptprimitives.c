/* Wine 8 has no bcryptprimitives.dll, from which Rust's std imports
 * ProcessPrng (its random source on Windows 10 and later). This stand-in
 * exports ProcessPrng on top of RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has. Built with mingw and copied into the Wine prefix by
 * .ci/windows-under-wine; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
