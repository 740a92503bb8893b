#include "io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ql {

Result<std::shared_ptr<MappedFile>> MappedFile::open(const std::string& path)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return makeError(ErrorCode::Io, path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return makeError(ErrorCode::Io, path + ": not a regular file");
    }
    std::shared_ptr<MappedFile> file(new MappedFile());
    file->m_path = path;
    file->m_size = static_cast<std::uint64_t>(st.st_size);
    if (file->m_size > 0) {
        void* p = ::mmap(nullptr, file->m_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            ::close(fd);
            return makeError(ErrorCode::Io, path + ": mmap failed: " + std::strerror(err));
        }
        file->m_data = static_cast<const std::uint8_t*>(p);
    }
    ::close(fd);
    return file;
}

std::shared_ptr<MappedFile> MappedFile::fromBytes(std::string label,
                                                  std::vector<std::uint8_t> bytes)
{
    std::shared_ptr<MappedFile> file(new MappedFile());
    file->m_path = std::move(label);
    file->m_owned = std::move(bytes);
    file->m_size = file->m_owned.size();
    file->m_data = file->m_owned.data();
    return file;
}

MappedFile::~MappedFile()
{
    if (m_data && m_owned.empty()) ::munmap(const_cast<std::uint8_t*>(m_data), m_size);
}

}  // namespace ql
