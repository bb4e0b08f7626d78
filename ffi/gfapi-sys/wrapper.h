/* The libgfapi API nasgw binds: the path API and the handle (glfs_h_*) API. */
#include <glusterfs/api/glfs.h>
#include <glusterfs/api/glfs-handles.h>
